namespace Bnn.Engine;

/// <summary>
/// The bit convention of every packed buffer in this library, written down once.
/// <para><b>Values.</b> A ±1 value v is stored as one bit b = (v == −1), so bit 1 means −1 and bit 0 means +1, as in
/// Larq Compute Engine. sign(0) = +1, so a zero pre-activation becomes bit 0.</para>
/// <para><b>Packing.</b> Activations are packed along channels: value (y, x, c) is bit c mod 64 of word
/// ⌊c/64⌋ of pixel (y, x); a pixel occupies <see cref="Words"/>(C) = ⌈C/64⌉ consecutive 64-bit words and pixels follow
/// in row-major order (H, W, words). Weights of a filter use the same layout over its kh x kw taps.</para>
/// <para><b>Padding bits.</b> Bits for channels c ≥ C in the last word are always 0, in activations and weights
/// alike. Then x ⊕ w is 0 there and the padding bits never reach a popcount.</para>
/// <para><b>Dot product.</b> For n valid bits, Σ xᵢwᵢ = (#agreements) − (#disagreements) = n − 2·popcount(x ⊕ w),
/// where n counts only valid (non-padding) bits. This is XNOR-popcount written with XOR.</para>
/// <para><b>Inverse filters.</b> With w̄ the complement of w on the n valid bits, popcount(x ⊕ w̄) = n − popcount(x ⊕ w),
/// so Σ xᵢ(−wᵢ) = −Σ xᵢwᵢ: an inverse filter's result is the negated result, at no cost.</para>
/// <para><b>Spatial padding.</b> A binary conv pads with a declared value. For ±1 (what our trainer uses) padded taps
/// are ordinary bits: 0 for +1, and for −1 the valid channel bits set to 1 (padding bits still 0), and no correction is
/// needed. For 0 (ONNX Conv's zero padding, in imported models) padded taps are filled as +1 and the excess
/// Σ over padded taps of w·1 is subtracted from each border accumulator afterwards, which is exact.</para>
/// <para><b>Max-pool.</b> max of ±1 values is +1 if any is +1, i.e. the result bit is the AND of the bits.</para>
/// </summary>
public static class BitConvention
{
    /// <summary>Bits per packed word.</summary>
    public const int WordBits = 64;

    /// <summary>Words needed to hold <paramref name="channels"/> bits.</summary>
    public static int Words(int channels) => (channels + WordBits - 1) / WordBits;

    /// <summary>The bit of value <paramref name="v"/> (+1 → 0, −1 → 1).</summary>
    public static ulong Bit(int v) => v < 0 ? 1UL : 0UL;

    /// <summary>The word a pad value fills a pixel with (0 is filled as +1 and corrected later), for word <paramref name="word"/> of <paramref name="channels"/>.</summary>
    public static ulong PadWord(int padValue, int channels, int word)
    {
        if (padValue >= 0)
        {
            return 0;
        }
        int valid = Math.Min(WordBits, channels - (word * WordBits));
        return valid >= WordBits ? ulong.MaxValue : (1UL << valid) - 1;
    }

    /// <summary>Packs ±1 values (one pixel's channels) into words.</summary>
    public static void Pack(ReadOnlySpan<sbyte> values, Span<ulong> words)
    {
        words.Clear();
        for (int c = 0; c < values.Length; c++)
        {
            words[c >> 6] |= Bit(values[c]) << (c & 63);
        }
    }
}
