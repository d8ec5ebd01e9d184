using System.Numerics;

namespace Bnn.Engine.Kernels;

/// <summary>
/// Row operations on int32 2-D results, the inner loops of the shared engine: vectorized with
/// <see cref="Vector{T}"/> and a scalar tail. Tested against plain loops over lengths 0-256.
/// </summary>
public static class IntRows
{
    /// <summary>dst[i] += scale · src[i].</summary>
    public static void AddScaled(ReadOnlySpan<int> src, int scale, Span<int> dst)
    {
        if (src.Length > dst.Length)
        {
            throw new ArgumentException("destination too short", nameof(dst));
        }
        int i = 0;
        if (Vector.IsHardwareAccelerated && src.Length >= Vector<int>.Count)
        {
            var s = new Vector<int>(scale);
            for (; i + Vector<int>.Count <= src.Length; i += Vector<int>.Count)
            {
                (new Vector<int>(dst[i..]) + (new Vector<int>(src[i..]) * s)).CopyTo(dst[i..]);
            }
        }
        for (; i < src.Length; i++)
        {
            dst[i] += scale * src[i];
        }
    }

    /// <summary>dst[i] = scale · src[i].</summary>
    public static void Scale(ReadOnlySpan<int> src, int scale, Span<int> dst)
    {
        if (src.Length > dst.Length)
        {
            throw new ArgumentException("destination too short", nameof(dst));
        }
        int i = 0;
        if (Vector.IsHardwareAccelerated && src.Length >= Vector<int>.Count)
        {
            var s = new Vector<int>(scale);
            for (; i + Vector<int>.Count <= src.Length; i += Vector<int>.Count)
            {
                (new Vector<int>(src[i..]) * s).CopyTo(dst[i..]);
            }
        }
        for (; i < src.Length; i++)
        {
            dst[i] = scale * src[i];
        }
    }

    /// <summary>dst[i] = −src[i].</summary>
    public static void Negate(ReadOnlySpan<int> src, Span<int> dst) => Scale(src, -1, dst);
}
