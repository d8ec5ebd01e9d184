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

    // Byte (8b + k) takes byte (8(7 − k) + b): an 8x8 byte transpose that also reverses the rows (for GF2P8AFFINEQB).
    private static readonly Vector512<byte> ByteTransposeReversed = Vector512.Create(
        Enumerable.Range(0, 64).Select(i => (byte)((8 * (7 - (i % 8))) + (i / 8))).ToArray());

    // Byte (8c + a) takes byte (8a + c): the plain 8x8 byte transpose.
    private static readonly Vector512<byte> ByteTranspose = Vector512.Create(
        Enumerable.Range(0, 64).Select(i => (byte)((8 * (i % 8)) + (i / 8))).ToArray());

    // Byte j of every qword is 1 << j: as GF2P8AFFINEQB's source, it reads column j of the matrix operand.
    private static readonly Vector512<byte> UnitBytes = Vector512.Create(0x8040_2010_0804_0201UL).AsByte();

    /// <summary>
    /// In place, bit j of row i ↔ bit i of row j (rows are 64-bit words, bit 0 = column 0): <see cref="Transpose64Simd"/>
    /// where the machine has AVX-512 VBMI and GFNI, else <see cref="Transpose64Avx2"/> where it has AVX2, else
    /// <see cref="Transpose64Scalar"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Transpose64(Span<ulong> rows)
    {
        if (rows.Length != 64)
        {
            throw new ArgumentException("a 64x64 bit matrix has 64 rows", nameof(rows));
        }
        if (SimdTranspose)
        {
            Transpose64Simd(rows);
            return;
        }
        if (Avx2Transpose)
        {
            Transpose64Avx2(rows);
            return;
        }
        Transpose64Scalar(rows);
    }

    /// <summary>Whether <see cref="Transpose64Simd"/> runs here.</summary>
    public static bool SimdTranspose => Avx512Vbmi.IsSupported && Gfni.V512.IsSupported;

    /// <summary>Whether <see cref="Transpose64Avx2"/> runs here.</summary>
    public static bool Avx2Transpose => Avx2.IsSupported && Vector256.IsHardwareAccelerated;

    /// <summary>
    /// <see cref="Transpose64Scalar"/>'s six rounds four rows to a 256-bit register. In the rounds that pair rows 32,
    /// 16, 8 and 4 apart both partners' four rows are contiguous; rows 2 and 1 apart are paired by regrouping two
    /// registers (vperm2i128, then vpunpck[lh]qdq), both rounds in one pass. About 530 instructions against about
    /// 1,350.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Transpose64Avx2(Span<ulong> rows)
    {
        ref ulong a = ref rows[0];
        ulong m = 0x0000_0000_FFFF_FFFFUL;
        for (int j = 32; j >= 4; j >>= 1, m ^= m << j)
        {
            var mask = Vector256.Create(m);
            for (int k = 0; k < 64; k = ((k | j) + 4) & ~j)
            {
                var low = Vector256.LoadUnsafe(ref a, (nuint)k);
                var high = Vector256.LoadUnsafe(ref a, (nuint)(k | j));
                var t = (Vector256.ShiftRightLogical(low, j) ^ high) & mask;
                (high ^ t).StoreUnsafe(ref a, (nuint)(k | j));
                (low ^ Vector256.ShiftLeft(t, j)).StoreUnsafe(ref a, (nuint)k);
            }
        }
        var m2 = Vector256.Create(0x3333_3333_3333_3333UL);
        var m1 = Vector256.Create(0x5555_5555_5555_5555UL);
        for (int k = 0; k < 64; k += 8)
        {
            var v0 = Vector256.LoadUnsafe(ref a, (nuint)k);
            var v1 = Vector256.LoadUnsafe(ref a, (nuint)(k + 4));
            // Rows 2 apart: lows (k, k+1, k+4, k+5) against highs (k+2, k+3, k+6, k+7).
            var low = Avx2.Permute2x128(v0, v1, 0x20);
            var high = Avx2.Permute2x128(v0, v1, 0x31);
            var t = (Vector256.ShiftRightLogical(low, 2) ^ high) & m2;
            (low, high) = (low ^ Vector256.ShiftLeft(t, 2), high ^ t);
            // Rows 1 apart: lows (k, k+2, k+4, k+6) against highs (k+1, k+3, k+5, k+7).
            (low, high) = (Avx2.UnpackLow(low, high), Avx2.UnpackHigh(low, high));
            t = (Vector256.ShiftRightLogical(low, 1) ^ high) & m1;
            (low, high) = (low ^ Vector256.ShiftLeft(t, 1), high ^ t);
            // Back through both regroupings: (k, k+1, k+4, k+5) and (k+2, k+3, k+6, k+7), then in order.
            (v0, v1) = (Avx2.UnpackLow(low, high), Avx2.UnpackHigh(low, high));
            Avx2.Permute2x128(v0, v1, 0x20).StoreUnsafe(ref a, (nuint)k);
            Avx2.Permute2x128(v0, v1, 0x31).StoreUnsafe(ref a, (nuint)(k + 4));
        }
    }

    /// <summary>Six rounds, each swapping the off-diagonal blocks of every 2j x 2j block (Hacker's Delight, §7-3).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Transpose64Scalar(Span<ulong> rows)
    {
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
    /// The matrix as 8x8 blocks of 8x8 bits, block (a, b) = rows 8a..8a+7, byte b. Per register of 8 rows: one byte
    /// permute gathers each block into a qword, one GF2P8AFFINEQB transposes the bits inside every qword; then a qword
    /// transpose across the 8 registers and one more byte permute put block (a, b) at rows 8b..8b+7, byte a. About 50
    /// vector instructions against about 1,500 scalar ones.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Transpose64Simd(Span<ulong> rows)
    {
        ref ulong r = ref rows[0];
        // u_a qword b, byte c: column 8b + c over rows 8a..8a+7 (bit i = row 8a + i).
        var u0 = Blocks(ref r, 0);
        var u1 = Blocks(ref r, 1);
        var u2 = Blocks(ref r, 2);
        var u3 = Blocks(ref r, 3);
        var u4 = Blocks(ref r, 4);
        var u5 = Blocks(ref r, 5);
        var u6 = Blocks(ref r, 6);
        var u7 = Blocks(ref r, 7);
        // Qword transpose: v_b qword a = u_a qword b, in three rounds of pairs.
        var even = Vector512.Create(0UL, 8, 2, 10, 4, 12, 6, 14);
        var odd = Vector512.Create(1UL, 9, 3, 11, 5, 13, 7, 15);
        var (p0, q0) = (Avx512F.PermuteVar8x64x2(u0, even, u1), Avx512F.PermuteVar8x64x2(u0, odd, u1));
        var (p2, q2) = (Avx512F.PermuteVar8x64x2(u2, even, u3), Avx512F.PermuteVar8x64x2(u2, odd, u3));
        var (p4, q4) = (Avx512F.PermuteVar8x64x2(u4, even, u5), Avx512F.PermuteVar8x64x2(u4, odd, u5));
        var (p6, q6) = (Avx512F.PermuteVar8x64x2(u6, even, u7), Avx512F.PermuteVar8x64x2(u6, odd, u7));
        var low2 = Vector512.Create(0UL, 1, 8, 9, 4, 5, 12, 13);
        var high2 = Vector512.Create(2UL, 3, 10, 11, 6, 7, 14, 15);
        var (r04, r26) = (Avx512F.PermuteVar8x64x2(p0, low2, p2), Avx512F.PermuteVar8x64x2(p0, high2, p2));
        var (r15, r37) = (Avx512F.PermuteVar8x64x2(q0, low2, q2), Avx512F.PermuteVar8x64x2(q0, high2, q2));
        var (s04, s26) = (Avx512F.PermuteVar8x64x2(p4, low2, p6), Avx512F.PermuteVar8x64x2(p4, high2, p6));
        var (s15, s37) = (Avx512F.PermuteVar8x64x2(q4, low2, q6), Avx512F.PermuteVar8x64x2(q4, high2, q6));
        var low4 = Vector512.Create(0UL, 1, 2, 3, 8, 9, 10, 11);
        var high4 = Vector512.Create(4UL, 5, 6, 7, 12, 13, 14, 15);
        Rows(ref r, 0, Avx512F.PermuteVar8x64x2(r04, low4, s04));
        Rows(ref r, 4, Avx512F.PermuteVar8x64x2(r04, high4, s04));
        Rows(ref r, 2, Avx512F.PermuteVar8x64x2(r26, low4, s26));
        Rows(ref r, 6, Avx512F.PermuteVar8x64x2(r26, high4, s26));
        Rows(ref r, 1, Avx512F.PermuteVar8x64x2(r15, low4, s15));
        Rows(ref r, 5, Avx512F.PermuteVar8x64x2(r15, high4, s15));
        Rows(ref r, 3, Avx512F.PermuteVar8x64x2(r37, low4, s37));
        Rows(ref r, 7, Avx512F.PermuteVar8x64x2(r37, high4, s37));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Blocks(ref ulong rows, int a)
    {
        var gathered = Avx512Vbmi.PermuteVar64x8(Vector512.LoadUnsafe(ref rows, (nuint)(8 * a)).AsByte(), ByteTransposeReversed);
        return Gfni.V512.GaloisFieldAffineTransform(UnitBytes, gathered, 0).AsUInt64();
    }

    /// <summary>v_b (qword a: column block b of row block a) to rows 8b..8b+7: byte a of row 8b + c is byte c of qword a.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Rows(ref ulong rows, int b, Vector512<ulong> v) =>
        Avx512Vbmi.PermuteVar64x8(v.AsByte(), ByteTranspose).AsUInt64().StoreUnsafe(ref rows, (nuint)(8 * b));

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
