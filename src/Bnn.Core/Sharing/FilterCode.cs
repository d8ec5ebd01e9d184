using System.Numerics;
using Bnn.Model;

namespace Bnn.Sharing;

/// <summary>
/// A 2-D filter (one filter k, one input channel c, kh x kw taps) as an n-bit code, n = kh·kw: bit t (t = ky·kw + kx)
/// is 1 when the weight is −1, the same convention as <see cref="Engine.BitConvention"/>. A filter and its
/// complement give negated results, so they form one <b>class</b>: the smaller of the code and its complement. The
/// filter's <b>sign</b> says which of the two it is. The sharing distance is d(u, v) = min(H(u, v), n − H(u, v)), so
/// inversion is free.
/// </summary>
public static class FilterCode
{
    /// <summary>Largest n = kh·kw for which layers are decomposed (codes are kept in 32-bit integers).</summary>
    public const int MaxTaps = 25;

    /// <summary>Whether a conv layer's 2-D filters can be coded.</summary>
    public static bool Supports(ConvLayer layer) => layer.KernelH * layer.KernelW <= MaxTaps;

    /// <summary>All-ones mask of n bits.</summary>
    public static int Mask(int n) => (1 << n) - 1;

    /// <summary>The code of filter k on channel c.</summary>
    public static int Code(ConvLayer layer, int k, int c)
    {
        int code = 0;
        for (int ky = 0; ky < layer.KernelH; ky++)
        {
            for (int kx = 0; kx < layer.KernelW; kx++)
            {
                if (layer.Weight(k, c, ky, kx) < 0)
                {
                    code |= 1 << ((ky * layer.KernelW) + kx);
                }
            }
        }
        return code;
    }

    /// <summary>Codes of a layer as [c][k].</summary>
    public static int[][] Codes(ConvLayer layer)
    {
        var codes = new int[layer.InChannels][];
        for (int c = 0; c < layer.InChannels; c++)
        {
            codes[c] = new int[layer.OutChannels];
            for (int k = 0; k < layer.OutChannels; k++)
            {
                codes[c][k] = Code(layer, k, c);
            }
        }
        return codes;
    }

    /// <summary>The class of a code: min(code, complement).</summary>
    public static int Class(int code, int n) => Math.Min(code, code ^ Mask(n));

    /// <summary>+1 if the code is its class representative, −1 if it is the complement.</summary>
    public static int Sign(int code, int n) => code == Class(code, n) ? 1 : -1;

    /// <summary>The code of class <paramref name="cls"/> with sign <paramref name="sign"/>.</summary>
    public static int WithSign(int cls, int sign, int n) => sign > 0 ? cls : cls ^ Mask(n);

    /// <summary>Hamming distance H(u, v).</summary>
    public static int Hamming(int u, int v) => BitOperations.PopCount((uint)(u ^ v));

    /// <summary>The sharing distance min(H, n − H).</summary>
    public static int Distance(int u, int v, int n)
    {
        int h = Hamming(u, v);
        return Math.Min(h, n - h);
    }
}
