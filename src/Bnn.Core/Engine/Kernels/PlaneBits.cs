using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bnn.Engine.Kernels;

/// <summary>
/// Moving ±1 activations between the packed layout (pixel-major, channels along bits; see <see cref="BitConvention"/>)
/// and pixel planes (channel-major, one small integer lane per pixel), which the plane conv works on. Both directions
/// go through a 64x64 bit-matrix transpose: 64 pixels' words become 64 channels' pixel masks and back.
/// </summary>
internal static class PlaneBits
{
    // Lane i reads mask byte i / 8: the broadcast word repeats in every 128-bit lane, so vpshufb's in-lane indices reach it.
    private static readonly Vector512<byte> ByteOfLane = Vector512.Create(
        (byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7);

    private static readonly Vector512<byte> BitOfLane = Vector512.Create(
        (byte)1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128,
        1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);

    /// <summary>
    /// In place, bit j of row i ↔ bit i of row j (rows are 64-bit words, bit 0 = column 0). Six rounds, each swapping
    /// the off-diagonal blocks of every 2j x 2j block (Hacker's Delight, §7-3).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Transpose64(Span<ulong> rows)
    {
        if (rows.Length != 64)
        {
            throw new ArgumentException("a 64x64 bit matrix has 64 rows", nameof(rows));
        }
        ref ulong a = ref rows[0];
        ulong m = 0x0000_0000_FFFF_FFFFUL;
        for (int j = 32; j != 0; j >>= 1, m ^= m << j)
        {
            for (int k = 0; k < 64; k = ((k | j) + 1) & ~j)
            {
                ref ulong low = ref Unsafe.Add(ref a, k);
                ref ulong high = ref Unsafe.Add(ref a, k | j);
                ulong t = ((low >> j) ^ high) & m;
                high ^= t;
                low ^= t << j;
            }
        }
    }

    /// <summary>
    /// The 64 values of a pixel mask (bit set = −1, clear = +1) as signed bytes, written to <paramref name="values"/>[0..64).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Expand(ulong mask, ref sbyte values)
    {
        if (Avx512BW.IsSupported)
        {
            var bytes = Avx512BW.Shuffle(Vector512.Create(mask).AsByte(), ByteOfLane);
            var set = Vector512.Equals(bytes & BitOfLane, BitOfLane).AsSByte();
            (set | Vector512<sbyte>.One).StoreUnsafe(ref values);
            return;
        }
        for (int i = 0; i < 64; i++)
        {
            Unsafe.Add(ref values, i) = (sbyte)(((mask >> i) & 1) != 0 ? -1 : 1);
        }
    }

    /// <summary>The same as <see cref="Expand(ulong, ref sbyte)"/> in 16-bit lanes.</summary>
    public static void Expand(ulong mask, ref short values)
    {
        if (Avx512BW.IsSupported)
        {
            Span<sbyte> bytes = stackalloc sbyte[64];
            Expand(mask, ref bytes[0]);
            var (lower, upper) = Vector512.Widen(Vector512.Create<sbyte>(bytes));
            lower.StoreUnsafe(ref values);
            upper.StoreUnsafe(ref values, 32);
            return;
        }
        for (int i = 0; i < 64; i++)
        {
            Unsafe.Add(ref values, i) = (short)(((mask >> i) & 1) != 0 ? -1 : 1);
        }
    }

    /// <summary>
    /// Bit j of <paramref name="masks"/>[i] is channel 64·<paramref name="word"/> + i of pixel <paramref name="first"/> + j:
    /// the packed pixels [first, first + count) (count ≤ 64, pixels of <paramref name="words"/> words) turned into
    /// channel masks. Missing pixels read as 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PixelsToChannels(ReadOnlySpan<ulong> input, int first, int count, int words, int word, Span<ulong> masks)
    {
        for (int i = 0; i < 64; i++)
        {
            masks[i] = i < count ? input[((first + i) * words) + word] : 0;
        }
        Transpose64(masks);
    }

    /// <summary>
    /// The other way, for outputs at flat positions q = y·<paramref name="flatWidth"/> + x: transposes
    /// <paramref name="masks"/> (mask j: output channel 64·<paramref name="word"/> + j over positions
    /// [first, first + 64)) and writes the <paramref name="count"/> positions with x &lt; <paramref name="width"/> into
    /// the packed <paramref name="output"/> (<paramref name="words"/> words per pixel); the others are dropped.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ChannelsToPositions(Span<ulong> masks, int first, int count, int flatWidth, int width, int words, int word, Span<ulong> output)
    {
        Transpose64(masks);
        for (int i = 0, y = first / flatWidth, x = first % flatWidth; i < count; i++)
        {
            if (x < width)
            {
                output[(((y * width) + x) * words) + word] = masks[i];
            }
            if (++x == flatWidth)
            {
                x = 0;
                y++;
            }
        }
    }
}
