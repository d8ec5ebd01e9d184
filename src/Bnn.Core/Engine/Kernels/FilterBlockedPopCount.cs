using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bnn.Engine.Kernels;

/// <summary>
/// How the vector kernels count the set bits of each byte of a 512-bit register. <see cref="Vbmi"/> needs
/// AVX-512 VBMI (Ice Lake, Zen 4 and later); <see cref="Nibble"/> needs only AVX-512BW. A kernel asked for a counter
/// the CPU lacks throws <see cref="PlatformNotSupportedException"/> (see <c>FilterBlockedPopCount.SupportedCounters</c>).
/// </summary>
public enum ByteCounter
{
    /// <summary>Two vpshufb lookups of 4-bit nibbles (Muła's method), with a mask and a shift to split them.</summary>
    Nibble,

    /// <summary>
    /// vpermb lookups of 6-bit fields: vpermb reads only an index byte's low 6 bits, so the first lookup needs no mask.
    /// A carry-save pair's four leftover top bits share a third lookup: 3 lookups per three words against 4, and 14
    /// vector ops against 19 (four-patch kernel on Zen 5: 1,345-1,371 against 1,013-1,097 Gbit-ops/s).
    /// </summary>
    Vbmi,
}

/// <summary>
/// Popcounts of one patch against a block of <see cref="Block"/> filters at once: a binary conv as an implicit GEMM
/// whose inner dimension is the patch's words and whose 8 columns share each broadcast patch word. Filters are stored
/// word-interleaved, (block, word, filter): the 8 filters' word t are one 64-byte row. Per patch word this is one
/// broadcast, one load and one XOR; words then go in threes through a carry-save adder (Harley-Seal's step, two
/// vpternlogq: the sum bits x₀⊕x₁⊕x₂ and the carry bits maj(x₀, x₁, x₂)), so that popcount(x₀) + popcount(x₁) +
/// popcount(x₂) = popcount(sum) + 2·popcount(carry), counted per byte (<see cref="ByteCounter"/>) into byte counters.
/// Those are summed into the 8 per-filter 64-bit lanes with vpsadbw only when they could overflow.
/// <see cref="Scalar"/> is the reference every path is tested against.
/// </summary>
internal static class FilterBlockedPopCount
{
    /// <summary>Filters per block: the 64-bit lanes of a 512-bit register.</summary>
    public const int Block = 8;

    /// <summary>
    /// Byte-counter capacity in units of one word's worst case (8 per byte): a triple costs 3 (8 + 2·8 = 24), a lone
    /// word 1, and 31·8 = 248 ≤ 255.
    /// </summary>
    private const int FlushUnits = 31;

    /// <summary>Whether the vector path runs here.</summary>
    public static bool IsAccelerated => Avx512BW.IsSupported;

    /// <summary>The byte counter the vector path uses here: VBMI where the CPU has it.</summary>
    public static ByteCounter Counter { get; } = Avx512Vbmi.IsSupported ? ByteCounter.Vbmi : ByteCounter.Nibble;

    /// <summary>Byte counters usable on this machine (none without AVX-512BW).</summary>
    public static IReadOnlyList<ByteCounter> SupportedCounters { get; } =
    [
        .. Avx512BW.IsSupported ? new[] { ByteCounter.Nibble } : [],
        .. Avx512Vbmi.IsSupported ? new[] { ByteCounter.Vbmi } : [],
    ];

    /// <summary>Interleaves filters (K, words) into (⌈K/8⌉, words, 8), zero-filling the missing filters of the last block.</summary>
    public static ulong[] Interleave(ReadOnlySpan<ulong> filters, int count, int words)
    {
        int blocks = (count + Block - 1) / Block;
        var result = new ulong[blocks * words * Block];
        for (int k = 0; k < count; k++)
        {
            int b = k / Block, j = k % Block;
            for (int t = 0; t < words; t++)
            {
                result[(((b * words) + t) * Block) + j] = filters[(k * words) + t];
            }
        }
        return result;
    }

    /// <summary>popcount(patch ⊕ filter) for the 8 filters of one interleaved block, written to <paramref name="counts"/>.</summary>
    public static void Compute(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, Span<int> counts) =>
        Compute(patch, block, counts, Counter);

    /// <summary><see cref="Compute(ReadOnlySpan{ulong}, ReadOnlySpan{ulong}, Span{int})"/> with a chosen byte counter (tests, benchmarks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Compute(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, Span<int> counts, ByteCounter counter)
    {
        if (IsAccelerated)
        {
            Avx512F.ConvertToVector256Int32(Counts(patch, block, counter).AsInt64()).CopyTo(counts);
        }
        else
        {
            Scalar(patch, block, counts);
        }
    }

    /// <summary>
    /// The conv's dot products n − 2·popcount for the block's filters, written straight to <paramref name="dot"/>
    /// (its first min(8, dot.Length) entries): the engine's inner step, with no per-filter scalar work.
    /// </summary>
    public static void DotProducts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, int n, Span<int> dot) =>
        DotProducts(patch, block, n, dot, Counter);

    /// <summary><see cref="DotProducts(ReadOnlySpan{ulong}, ReadOnlySpan{ulong}, int, Span{int})"/> with a chosen byte counter.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotProducts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, int n, Span<int> dot, ByteCounter counter)
    {
        if (IsAccelerated)
        {
            Write(Vector256.Create(n) - (Avx512F.ConvertToVector256Int32(Counts(patch, block, counter).AsInt64()) << 1), dot);
            return;
        }
        // Not inlined, so this frame's 32 bytes are released on return even when called in a loop.
        Span<int> counts = stackalloc int[Block];
        Scalar(patch, block, counts);
        for (int j = 0; j < dot.Length && j < Block; j++)
        {
            dot[j] = n - (2 * counts[j]);
        }
    }

    /// <summary>
    /// <see cref="DotProducts(ReadOnlySpan{ulong}, ReadOnlySpan{ulong}, int, Span{int})"/> for two patches against the
    /// same block: each filter row is loaded once for both, and the two independent count chains overlap.
    /// </summary>
    public static void DotProducts(ReadOnlySpan<ulong> patchA, ReadOnlySpan<ulong> patchB, ReadOnlySpan<ulong> block, int n, Span<int> dotA, Span<int> dotB) =>
        DotProducts(patchA, patchB, block, Math.Min(Block, dotA.Length), n, dotA, dotB, Counter);

    /// <summary>
    /// Two patches against every block of an interleaved filter bank (<see cref="Interleave"/>): all
    /// <paramref name="filters"/> dot products of each patch in one call. The byte counter is chosen and its tables
    /// loaded once per call, not per block.
    /// </summary>
    public static void DotProducts(ReadOnlySpan<ulong> patchA, ReadOnlySpan<ulong> patchB, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dotA, Span<int> dotB) =>
        DotProducts(patchA, patchB, bank, filters, n, dotA, dotB, Counter);

    /// <summary>The two-patch bank dot products with a chosen byte counter (tests, benchmarks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotProducts(ReadOnlySpan<ulong> patchA, ReadOnlySpan<ulong> patchB, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dotA, Span<int> dotB, ByteCounter counter)
    {
        if (!IsAccelerated || patchA.Length != patchB.Length)
        {
            DotProducts(patchA, bank, filters, n, dotA, counter);
            DotProducts(patchB, bank, filters, n, dotB, counter);
            return;
        }
        CheckBank(bank, filters, patchA.Length);
        ArgumentOutOfRangeException.ThrowIfLessThan(Math.Min(dotA.Length, dotB.Length), filters);
        if (counter == ByteCounter.Vbmi)
        {
            BankPair(VbmiBytes.Create(), patchA, patchB, bank, filters, n, dotA, dotB);
        }
        else
        {
            BankPair(NibbleBytes.Create(), patchA, patchB, bank, filters, n, dotA, dotB);
        }
    }

    /// <summary>
    /// Four patches, stored back to back in <paramref name="patches"/>, against every block of the bank: each filter row
    /// is loaded once for all four, and the per-call and per-block work is shared by four positions instead of two.
    /// <paramref name="dots"/> receives the four rows of <paramref name="filters"/> dot products, patch after patch.
    /// </summary>
    public static void DotProducts4(ReadOnlySpan<ulong> patches, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dots) =>
        DotProducts4(patches, bank, filters, n, dots, Counter);

    /// <summary>The four-patch bank dot products with a chosen byte counter (tests, benchmarks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotProducts4(ReadOnlySpan<ulong> patches, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dots, ByteCounter counter)
    {
        if (patches.Length % 4 != 0)
        {
            throw new ArgumentException("four patches of equal length expected", nameof(patches));
        }
        int words = patches.Length / 4;
        ArgumentOutOfRangeException.ThrowIfLessThan(dots.Length, 4 * filters);
        if (!IsAccelerated)
        {
            for (int i = 0; i < 4; i++)
            {
                DotProducts(patches.Slice(i * words, words), bank, filters, n, dots.Slice(i * filters, filters), counter);
            }
            return;
        }
        CheckBank(bank, filters, words);
        if (counter == ByteCounter.Vbmi)
        {
            BankQuad(VbmiBytes.Create(), patches, bank, filters, n, dots);
        }
        else
        {
            BankQuad(NibbleBytes.Create(), patches, bank, filters, n, dots);
        }
    }

    /// <summary>
    /// <see cref="DotProducts4(ReadOnlySpan{ulong}, ReadOnlySpan{ulong}, int, int, Span{int})"/> thresholded straight
    /// into packed bits: the four positions' ⌈filters/64⌉ output words each, back to back in <paramref name="output"/>.
    /// A bit is set for −1, i.e. not ((dot ≥ bound) ≠ flip), and 0 past the last filter (<see cref="BitConvention"/>).
    /// <paramref name="pairedBounds"/> holds, per block of 8 filters, their 8 bounds twice (<see cref="PairBounds"/>), so
    /// that one compare covers two positions.
    /// </summary>
    public static void Threshold4(ReadOnlySpan<ulong> patches, ReadOnlySpan<ulong> bank, int filters, int n,
        ReadOnlySpan<int> pairedBounds, ReadOnlySpan<ulong> flips, Span<ulong> output) =>
        Threshold4(patches, bank, filters, n, pairedBounds, flips, output, IsAccelerated ? Counter : null);

    /// <summary>
    /// <see cref="Threshold4(ReadOnlySpan{ulong}, ReadOnlySpan{ulong}, int, int, ReadOnlySpan{int}, ReadOnlySpan{ulong}, Span{ulong})"/>
    /// with a chosen byte counter, or through the scalar reference for null.
    /// </summary>
    public static void Threshold4(ReadOnlySpan<ulong> patches, ReadOnlySpan<ulong> bank, int filters, int n,
        ReadOnlySpan<int> pairedBounds, ReadOnlySpan<ulong> flips, Span<ulong> output, ByteCounter? counter)
    {
        if (patches.Length % 4 != 0)
        {
            throw new ArgumentException("four patches of equal length expected", nameof(patches));
        }
        int words = patches.Length / 4;
        // Back-to-back patches are the in-place case with one run per patch.
        Threshold4(patches, [0, words, 2 * words, 3 * words], 1, words, words, bank, filters, n, pairedBounds, flips, output, counter);
    }

    /// <summary>
    /// <see cref="Threshold4(ReadOnlySpan{ulong}, ReadOnlySpan{ulong}, int, int, ReadOnlySpan{int}, ReadOnlySpan{ulong}, Span{ulong})"/>
    /// on patches read in place: patch i starts at <paramref name="source"/>[<paramref name="starts"/>[i]] and is
    /// <paramref name="rows"/> runs of <paramref name="rowWords"/> words, <paramref name="stride"/> words apart.
    /// </summary>
    public static void Threshold4(ReadOnlySpan<ulong> source, ReadOnlySpan<int> starts, int rows, int rowWords, int stride, ReadOnlySpan<ulong> bank, int filters, int n,
        ReadOnlySpan<int> pairedBounds, ReadOnlySpan<ulong> flips, Span<ulong> output) =>
        Threshold4(source, starts, rows, rowWords, stride, bank, filters, n, pairedBounds, flips, output, IsAccelerated ? Counter : null);

    /// <summary>The in-place four-patch threshold with a chosen byte counter, or through the scalar reference for null.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Threshold4(ReadOnlySpan<ulong> source, ReadOnlySpan<int> starts, int rows, int rowWords, int stride, ReadOnlySpan<ulong> bank, int filters, int n,
        ReadOnlySpan<int> pairedBounds, ReadOnlySpan<ulong> flips, Span<ulong> output, ByteCounter? counter)
    {
        int blocks = (filters + Block - 1) / Block, outWords = BitConvention.Words(filters);
        CheckBank(bank, filters, rows * rowWords);
        ArgumentOutOfRangeException.ThrowIfLessThan(pairedBounds.Length, blocks * 2 * Block);
        ArgumentOutOfRangeException.ThrowIfLessThan(flips.Length, outWords);
        ArgumentOutOfRangeException.ThrowIfLessThan(output.Length, 4 * outWords);
        ArgumentOutOfRangeException.ThrowIfLessThan(starts.Length, 4);
        for (int i = 0; i < 4; i++)
        {
            if (starts[i] < 0 || (rows > 0 && (long)starts[i] + ((long)(rows - 1) * stride) + rowWords > source.Length))
            {
                throw new ArgumentOutOfRangeException(nameof(starts), "a patch runs past its source");
            }
        }
        switch (counter)
        {
            case ByteCounter.Vbmi:
                ThresholdQuad(VbmiBytes.Create(), ref Word(source, starts[0]), ref Word(source, starts[1]), ref Word(source, starts[2]), ref Word(source, starts[3]),
                    rows, rowWords, stride, bank, filters, n, pairedBounds, flips, output);
                break;
            case ByteCounter.Nibble:
                ThresholdQuad(NibbleBytes.Create(), ref Word(source, starts[0]), ref Word(source, starts[1]), ref Word(source, starts[2]), ref Word(source, starts[3]),
                    rows, rowWords, stride, bank, filters, n, pairedBounds, flips, output);
                break;
            default:
                for (int i = 0; i < 4; i++)
                {
                    var bits = output.Slice(i * outWords, outWords);
                    bits.Clear();
                    for (int k = 0; k < filters; k++)
                    {
                        int dot = n - (2 * ScalarCount(source[starts[i]..], rows, rowWords, stride, bank, k));
                        bool positive = (dot >= pairedBounds[((k / Block) * 2 * Block) + (k % Block)]) != ((flips[k >> 6] >> (k & 63) & 1) != 0);
                        bits[k >> 6] |= positive ? 0 : 1UL << (k & 63);
                    }
                }
                break;
        }
    }

    /// <summary>
    /// popcount(patch ⊕ filter k) for a patch of <paramref name="rows"/> runs in <paramref name="patch"/> against an
    /// interleaved bank, one word at a time: the reference.
    /// </summary>
    private static int ScalarCount(ReadOnlySpan<ulong> patch, int rows, int rowWords, int stride, ReadOnlySpan<ulong> bank, int k)
    {
        int pop = 0, words = rows * rowWords;
        for (int r = 0; r < rows; r++)
        {
            for (int t = 0; t < rowWords; t++)
            {
                pop += BitOperations.PopCount(patch[(r * stride) + t] ^ bank[(((k / Block * words) + (r * rowWords) + t) * Block) + (k % Block)]);
            }
        }
        return pop;
    }

    private static ref ulong Word(ReadOnlySpan<ulong> span, int index) => ref Unsafe.Add(ref Unsafe.AsRef(in span.GetPinnableReference()), index);

    /// <summary>Per block of 8 filters, their 8 bounds twice, zero-padded to whole blocks: the layout of <see cref="Threshold4(ReadOnlySpan{ulong}, ReadOnlySpan{ulong}, int, int, ReadOnlySpan{int}, ReadOnlySpan{ulong}, Span{ulong})"/>.</summary>
    public static int[] PairBounds(ReadOnlySpan<int> bounds)
    {
        int blocks = (bounds.Length + Block - 1) / Block;
        var paired = new int[blocks * 2 * Block];
        for (int k = 0; k < bounds.Length; k++)
        {
            paired[((k / Block) * 2 * Block) + (k % Block)] = bounds[k];
            paired[((k / Block) * 2 * Block) + Block + (k % Block)] = bounds[k];
        }
        return paired;
    }

    /// <summary>One patch against every block of an interleaved filter bank: a dense layer's dot products.</summary>
    public static void DotProducts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dot) =>
        DotProducts(patch, bank, filters, n, dot, Counter);

    /// <summary>The one-patch bank dot products with a chosen byte counter (tests, benchmarks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotProducts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dot, ByteCounter counter)
    {
        int blockWords = patch.Length * Block;
        if (!IsAccelerated)
        {
            for (int first = 0; first < filters; first += Block)
            {
                DotProducts(patch, bank.Slice((first / Block) * blockWords, blockWords), n, dot.Slice(first, Math.Min(Block, filters - first)), counter);
            }
            return;
        }
        CheckBank(bank, filters, patch.Length);
        ArgumentOutOfRangeException.ThrowIfLessThan(dot.Length, filters);
        if (counter == ByteCounter.Vbmi)
        {
            BankSingle(VbmiBytes.Create(), patch, bank, filters, n, dot);
        }
        else
        {
            BankSingle(NibbleBytes.Create(), patch, bank, filters, n, dot);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BankSingle<TBytes>(TBytes bytes, ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dot)
        where TBytes : struct, IByteCounts<TBytes>
    {
        int blockWords = patch.Length * Block;
        var nn = Vector256.Create(n);
        for (int first = 0; first < filters; first += Block)
        {
            var counts = SingleCounts(bytes, patch, bank.Slice((first / Block) * blockWords, blockWords));
            Write(nn - (Avx512F.ConvertToVector256Int32(counts.AsInt64()) << 1), dot.Slice(first, Math.Min(Block, filters - first)));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CheckBank(ReadOnlySpan<ulong> bank, int filters, int words)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(filters);
        ArgumentOutOfRangeException.ThrowIfLessThan(bank.Length, (filters + Block - 1) / Block * words * Block, nameof(bank));
    }

    private static void Write(Vector256<int> values, Span<int> dot)
    {
        if (dot.Length >= Block)
        {
            values.CopyTo(dot);
            return;
        }
        for (int j = 0; j < dot.Length; j++)
        {
            dot[j] = values.GetElement(j);
        }
    }

    /// <summary>The reference: a plain loop per filter.</summary>
    public static void Scalar(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, Span<int> counts)
    {
        for (int j = 0; j < Block; j++)
        {
            int sum = 0;
            for (int t = 0; t < patch.Length; t++)
            {
                sum += BitOperations.PopCount(patch[t] ^ block[(t * Block) + j]);
            }
            counts[j] = sum;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector512<ulong> Counts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, ByteCounter counter) =>
        counter == ByteCounter.Vbmi ? SingleCounts(VbmiBytes.Create(), patch, block) : SingleCounts(NibbleBytes.Create(), patch, block);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BankPair<TBytes>(TBytes bytes, ReadOnlySpan<ulong> patchA, ReadOnlySpan<ulong> patchB, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dotA, Span<int> dotB)
        where TBytes : struct, IByteCounts<TBytes>
    {
        int words = patchA.Length, blockWords = words * Block;
        ref ulong a = ref Unsafe.AsRef(in patchA.GetPinnableReference());
        ref ulong b = ref Unsafe.AsRef(in patchB.GetPinnableReference());
        ref ulong w = ref Unsafe.AsRef(in bank.GetPinnableReference());
        var nn = Vector512.Create(n);
        // The low dwords of both patches' 8 counts, side by side: one shift and subtract for the 16 dot products.
        var lowDwords = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for (int first = 0; first < filters; first += Block)
        {
            var (countsA, countsB) = PairCounts(bytes, ref a, ref b, words, ref Unsafe.Add(ref w, (first / Block) * blockWords));
            var dots = nn - (Avx512F.PermuteVar16x32x2(countsA.AsInt32(), lowDwords, countsB.AsInt32()) << 1);
            int count = Math.Min(Block, filters - first);
            Write(dots.GetLower(), dotA.Slice(first, count));
            Write(dots.GetUpper(), dotB.Slice(first, count));
        }
    }

    /// <summary>
    /// Each block's 16 dot products (two positions' 8) are compared with the paired bounds in one vpcmpd; the 16-bit
    /// mask's halves land at the block's place in each position's word, which is written once its 8 blocks are in.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ThresholdQuad<TBytes>(TBytes bytes, ref ulong a, ref ulong b, ref ulong c, ref ulong d, int rows, int rowWords, int stride,
        ReadOnlySpan<ulong> bank, int filters, int n, ReadOnlySpan<int> pairedBounds, ReadOnlySpan<ulong> flips, Span<ulong> output)
        where TBytes : struct, IByteCounts<TBytes>
    {
        int blockWords = rows * rowWords * Block, outWords = BitConvention.Words(filters);
        ref ulong w = ref Unsafe.AsRef(in bank.GetPinnableReference());
        ref int bound = ref Unsafe.AsRef(in pairedBounds.GetPinnableReference());
        var nn = Vector512.Create(n);
        var lowDwords = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        ulong geAB = 0, geCD = 0, geAB2 = 0, geCD2 = 0;
        for (int first = 0; first < filters; first += Block)
        {
            var (countsA, countsB, countsC, countsD) = QuadCounts(bytes, ref a, ref b, ref c, ref d, rows, rowWords, stride, ref Unsafe.Add(ref w, (first / Block) * blockWords));
            var bounds16 = Vector512.LoadUnsafe(ref bound, (nuint)(first * 2));
            var dotsAB = nn - (Avx512F.PermuteVar16x32x2(countsA.AsInt32(), lowDwords, countsB.AsInt32()) << 1);
            var dotsCD = nn - (Avx512F.PermuteVar16x32x2(countsC.AsInt32(), lowDwords, countsD.AsInt32()) << 1);
            // Bits 0-7 of each mask are the first position's, 8-15 the second's; each position gathers its word's
            // 64 bits, a byte per block, in a register of its own.
            int slot = (first >> 3) & 7;
            ulong maskAB = Vector512.GreaterThanOrEqual(dotsAB, bounds16).ExtractMostSignificantBits();
            ulong maskCD = Vector512.GreaterThanOrEqual(dotsCD, bounds16).ExtractMostSignificantBits();
            geAB |= (maskAB & 0xFF) << (slot * 8);
            geAB2 |= (maskAB >> 8) << (slot * 8);
            geCD |= (maskCD & 0xFF) << (slot * 8);
            geCD2 |= (maskCD >> 8) << (slot * 8);
            if (slot == 7 || first + Block >= filters)
            {
                int word = first >> 6;
                int valid = Math.Min(64, filters - (word * 64));
                ulong keep = valid == 64 ? ulong.MaxValue : (1UL << valid) - 1;
                ulong flip = flips[word];
                output[word] = ~(geAB ^ flip) & keep;
                output[outWords + word] = ~(geAB2 ^ flip) & keep;
                output[(2 * outWords) + word] = ~(geCD ^ flip) & keep;
                output[(3 * outWords) + word] = ~(geCD2 ^ flip) & keep;
                geAB = geAB2 = geCD = geCD2 = 0;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BankQuad<TBytes>(TBytes bytes, ReadOnlySpan<ulong> patches, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dots)
        where TBytes : struct, IByteCounts<TBytes>
    {
        int words = patches.Length / 4, blockWords = words * Block;
        ref ulong a = ref Unsafe.AsRef(in patches.GetPinnableReference());
        ref ulong b = ref Unsafe.Add(ref a, words);
        ref ulong c = ref Unsafe.Add(ref b, words);
        ref ulong d = ref Unsafe.Add(ref c, words);
        ref ulong w = ref Unsafe.AsRef(in bank.GetPinnableReference());
        var nn = Vector512.Create(n);
        var lowDwords = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for (int first = 0; first < filters; first += Block)
        {
            ref ulong block = ref Unsafe.Add(ref w, (first / Block) * blockWords);
            var (countsA, countsB, countsC, countsD) = QuadCounts(bytes, ref a, ref b, ref c, ref d, 1, words, words, ref block);
            var dotsAB = nn - (Avx512F.PermuteVar16x32x2(countsA.AsInt32(), lowDwords, countsB.AsInt32()) << 1);
            var dotsCD = nn - (Avx512F.PermuteVar16x32x2(countsC.AsInt32(), lowDwords, countsD.AsInt32()) << 1);
            int count = Math.Min(Block, filters - first);
            Write(dotsAB.GetLower(), dots.Slice(first, count));
            Write(dotsAB.GetUpper(), dots.Slice(filters + first, count));
            Write(dotsCD.GetLower(), dots.Slice((2 * filters) + first, count));
            Write(dotsCD.GetUpper(), dots.Slice((3 * filters) + first, count));
        }
    }

    /// <summary>
    /// Four patches' counts, per filter lane, each filter row loaded once for all four. A patch is
    /// <paramref name="rows"/> runs of <paramref name="rowWords"/> words, <paramref name="stride"/> words apart in its
    /// source (one run for a gathered patch), and the filter block holds the same words back to back.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<ulong> A, Vector512<ulong> B, Vector512<ulong> C, Vector512<ulong> D) QuadCounts<TBytes>(
        TBytes bytes, ref ulong ra, ref ulong rb, ref ulong rc, ref ulong rd, int rows, int rowWords, int stride, ref ulong rw)
        where TBytes : struct, IByteCounts<TBytes>
    {
        Vector512<ulong> totalA = Vector512<ulong>.Zero, totalB = Vector512<ulong>.Zero, totalC = Vector512<ulong>.Zero, totalD = Vector512<ulong>.Zero;
        Vector512<byte> accA = Vector512<byte>.Zero, accB = Vector512<byte>.Zero, accC = Vector512<byte>.Zero, accD = Vector512<byte>.Zero;
        int units = 0;
        for (int r = 0, row = 0; r < rows; r++, row += stride, rw = ref Unsafe.Add(ref rw, rowWords * Block))
        {
            int t = 0;
            for (; t + 3 <= rowWords; t += 3)
            {
                if (units > FlushUnits - 3)
                {
                    totalA += Flush(ref accA);
                    totalB += Flush(ref accB);
                    totalC += Flush(ref accC);
                    totalD += Flush(ref accD);
                    units = 0;
                }
                var w0 = Vector512.LoadUnsafe(ref rw, (nuint)(t * Block));
                var w1 = Vector512.LoadUnsafe(ref rw, (nuint)((t + 1) * Block));
                var w2 = Vector512.LoadUnsafe(ref rw, (nuint)((t + 2) * Block));
                accA += Triple(bytes, ref ra, row + t, w0, w1, w2);
                accB += Triple(bytes, ref rb, row + t, w0, w1, w2);
                accC += Triple(bytes, ref rc, row + t, w0, w1, w2);
                accD += Triple(bytes, ref rd, row + t, w0, w1, w2);
                units += 3;
            }
            for (; t < rowWords; t++)
            {
                if (units > FlushUnits - 1)
                {
                    totalA += Flush(ref accA);
                    totalB += Flush(ref accB);
                    totalC += Flush(ref accC);
                    totalD += Flush(ref accD);
                    units = 0;
                }
                var wt = Vector512.LoadUnsafe(ref rw, (nuint)(t * Block));
                accA += bytes.Count((Vector512.Create(Unsafe.Add(ref ra, row + t)) ^ wt).AsByte());
                accB += bytes.Count((Vector512.Create(Unsafe.Add(ref rb, row + t)) ^ wt).AsByte());
                accC += bytes.Count((Vector512.Create(Unsafe.Add(ref rc, row + t)) ^ wt).AsByte());
                accD += bytes.Count((Vector512.Create(Unsafe.Add(ref rd, row + t)) ^ wt).AsByte());
                units++;
            }
        }
        return (totalA + Flush(ref accA), totalB + Flush(ref accB), totalC + Flush(ref accC), totalD + Flush(ref accD));
    }

    /// <summary>Patch words t..t+2 against the filter rows: their XORs through the carry-save adder, counted per byte.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<byte> Triple<TBytes>(TBytes bytes, ref ulong patch, int t, Vector512<ulong> w0, Vector512<ulong> w1, Vector512<ulong> w2)
        where TBytes : struct, IByteCounts<TBytes>
    {
        var x0 = Vector512.Create(Unsafe.Add(ref patch, t)) ^ w0;
        var x1 = Vector512.Create(Unsafe.Add(ref patch, t + 1)) ^ w1;
        var x2 = Vector512.Create(Unsafe.Add(ref patch, t + 2)) ^ w2;
        return bytes.CountSumAndCarry(Avx512F.TernaryLogic(x0, x1, x2, 0x96).AsByte(), Avx512F.TernaryLogic(x0, x1, x2, 0xE8).AsByte());
    }

    /// <summary>Both patches' counts, per filter lane, through the carry-save triples.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<ulong> A, Vector512<ulong> B) PairCounts<TBytes>(TBytes bytes, ref ulong ra, ref ulong rb, int words, ref ulong rw)
        where TBytes : struct, IByteCounts<TBytes>
    {
        Vector512<ulong> totalA = Vector512<ulong>.Zero, totalB = Vector512<ulong>.Zero;
        Vector512<byte> accA = Vector512<byte>.Zero, accB = Vector512<byte>.Zero;
        int units = 0, t = 0;
        for (; t + 3 <= words; t += 3)
        {
            if (units > FlushUnits - 3)
            {
                totalA += Flush(ref accA);
                totalB += Flush(ref accB);
                units = 0;
            }
            var w0 = Vector512.LoadUnsafe(ref rw, (nuint)(t * Block));
            var w1 = Vector512.LoadUnsafe(ref rw, (nuint)((t + 1) * Block));
            var w2 = Vector512.LoadUnsafe(ref rw, (nuint)((t + 2) * Block));
            var a0 = Vector512.Create(Unsafe.Add(ref ra, t)) ^ w0;
            var a1 = Vector512.Create(Unsafe.Add(ref ra, t + 1)) ^ w1;
            var a2 = Vector512.Create(Unsafe.Add(ref ra, t + 2)) ^ w2;
            var b0 = Vector512.Create(Unsafe.Add(ref rb, t)) ^ w0;
            var b1 = Vector512.Create(Unsafe.Add(ref rb, t + 1)) ^ w1;
            var b2 = Vector512.Create(Unsafe.Add(ref rb, t + 2)) ^ w2;
            accA += bytes.CountSumAndCarry(Avx512F.TernaryLogic(a0, a1, a2, 0x96).AsByte(), Avx512F.TernaryLogic(a0, a1, a2, 0xE8).AsByte());
            accB += bytes.CountSumAndCarry(Avx512F.TernaryLogic(b0, b1, b2, 0x96).AsByte(), Avx512F.TernaryLogic(b0, b1, b2, 0xE8).AsByte());
            units += 3;
        }
        // At most two lone words remain.
        if (units > FlushUnits - (words - t))
        {
            totalA += Flush(ref accA);
            totalB += Flush(ref accB);
        }
        for (; t < words; t++)
        {
            var wt = Vector512.LoadUnsafe(ref rw, (nuint)(t * Block));
            accA += bytes.Count((Vector512.Create(Unsafe.Add(ref ra, t)) ^ wt).AsByte());
            accB += bytes.Count((Vector512.Create(Unsafe.Add(ref rb, t)) ^ wt).AsByte());
        }
        return (totalA + Flush(ref accA), totalB + Flush(ref accB));
    }

    /// <summary>One patch's counts, per filter lane, through the carry-save triples.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> SingleCounts<TBytes>(TBytes bytes, ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block)
        where TBytes : struct, IByteCounts<TBytes>
    {
        var total = Vector512<ulong>.Zero;
        var acc = Vector512<byte>.Zero;
        ref ulong rw = ref Unsafe.AsRef(in block.GetPinnableReference());
        ref ulong rp = ref Unsafe.AsRef(in patch.GetPinnableReference());
        int units = 0, t = 0, length = patch.Length;
        for (; t + 3 <= length; t += 3)
        {
            if (units > FlushUnits - 3)
            {
                total += Flush(ref acc);
                units = 0;
            }
            var x0 = Vector512.Create(Unsafe.Add(ref rp, t)) ^ Vector512.LoadUnsafe(ref rw, (nuint)(t * Block));
            var x1 = Vector512.Create(Unsafe.Add(ref rp, t + 1)) ^ Vector512.LoadUnsafe(ref rw, (nuint)((t + 1) * Block));
            var x2 = Vector512.Create(Unsafe.Add(ref rp, t + 2)) ^ Vector512.LoadUnsafe(ref rw, (nuint)((t + 2) * Block));
            acc += bytes.CountSumAndCarry(Avx512F.TernaryLogic(x0, x1, x2, 0x96).AsByte(), Avx512F.TernaryLogic(x0, x1, x2, 0xE8).AsByte());
            units += 3;
        }
        // At most two lone words remain.
        if (units > FlushUnits - (length - t))
        {
            total += Flush(ref acc);
        }
        for (; t < length; t++)
        {
            acc += bytes.Count((Vector512.Create(Unsafe.Add(ref rp, t)) ^ Vector512.LoadUnsafe(ref rw, (nuint)(t * Block))).AsByte());
        }
        return total + Flush(ref acc);
    }

    /// <summary>Sums the byte counters into the 8 per-filter lanes and clears them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Flush(ref Vector512<byte> bytes)
    {
        var sum = Avx512BW.SumAbsoluteDifferences(bytes, Vector512<byte>.Zero).AsUInt64();
        bytes = Vector512<byte>.Zero;
        return sum;
    }

    /// <summary>
    /// A per-byte bit counter. Its tables are fields, so a kernel loads them once and the JIT keeps them in registers
    /// for the whole loop (static readonly vectors are not constants in methods compiled before the class initializes).
    /// </summary>
    private interface IByteCounts<TSelf>
        where TSelf : struct, IByteCounts<TSelf>
    {
        static abstract TSelf Create();

        /// <summary>Bits set in each byte of <paramref name="x"/> (at most 8).</summary>
        Vector512<byte> Count(Vector512<byte> x);

        /// <summary>Bits set in each byte of <paramref name="sum"/> plus twice those of <paramref name="carry"/> (at most 24).</summary>
        Vector512<byte> CountSumAndCarry(Vector512<byte> sum, Vector512<byte> carry);
    }

    private readonly struct NibbleBytes(Vector512<byte> table) : IByteCounts<NibbleBytes>
    {
        private static readonly byte[] Nibbles = Table(i => BitOperations.PopCount((uint)(i & 15)));

        public static NibbleBytes Create() => new(Vector512.Create(Nibbles));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<byte> Count(Vector512<byte> x)
        {
            var low = Vector512.Create((byte)0x0F);
            return Avx512BW.Shuffle(table, x & low) + Avx512BW.Shuffle(table, Avx512BW.ShiftRightLogical(x.AsUInt16(), 4).AsByte() & low);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<byte> CountSumAndCarry(Vector512<byte> sum, Vector512<byte> carry)
        {
            var c = Count(carry);
            return Count(sum) + c + c;
        }
    }

    /// <summary>
    /// vpermb reads the low 6 bits of each index byte. Bits 0-5 of the sum and of the carry are one lookup each (the
    /// carry's table holds doubled counts). Their bits 6-7 are gathered into one index, sum's at bits 0-1 (a 16-bit
    /// shift right by 6) and carry's at bits 2-3 (by 4), for a third table that ignores bits 4-5, where the shifts
    /// bring in the next byte's bits.
    /// </summary>
    private readonly struct VbmiBytes(Vector512<byte> low6, Vector512<byte> low6Twice, Vector512<byte> topBits, Vector512<byte> top2) : IByteCounts<VbmiBytes>
    {
        private static readonly byte[] Low6 = Table(i => BitOperations.PopCount((uint)i));
        private static readonly byte[] Low6Twice = Table(i => 2 * BitOperations.PopCount((uint)i));
        private static readonly byte[] TopBits = Table(i => BitOperations.PopCount((uint)(i & 3)) + (2 * BitOperations.PopCount((uint)((i >> 2) & 3))));
        private static readonly byte[] Top2 = Table(i => BitOperations.PopCount((uint)(i >> 4)));

        public static VbmiBytes Create() => new(Vector512.Create(Low6), Vector512.Create(Low6Twice), Vector512.Create(TopBits), Vector512.Create(Top2));

        /// <summary>Bits 0-5 directly; bits 6-7, shifted right by 2, are index bits 4-5 of the fourth table.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<byte> Count(Vector512<byte> x) =>
            Avx512Vbmi.PermuteVar64x8(low6, x) + Avx512Vbmi.PermuteVar64x8(top2, Avx512BW.ShiftRightLogical(x.AsUInt16(), 2).AsByte());

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<byte> CountSumAndCarry(Vector512<byte> sum, Vector512<byte> carry)
        {
            // (a & mask) | (b & ~mask): bits 0-1 from the shifted sum, the rest from the shifted carry.
            var top = Avx512F.TernaryLogic(
                Avx512BW.ShiftRightLogical(sum.AsUInt16(), 6).AsByte(),
                Avx512BW.ShiftRightLogical(carry.AsUInt16(), 4).AsByte(),
                Vector512.Create((byte)3), 0xE4);
            return Avx512Vbmi.PermuteVar64x8(low6, sum) + Avx512Vbmi.PermuteVar64x8(low6Twice, carry) + Avx512Vbmi.PermuteVar64x8(topBits, top);
        }
    }

    private static byte[] Table(Func<int, int> count)
    {
        var table = new byte[Vector512<byte>.Count];
        for (int i = 0; i < table.Length; i++)
        {
            table[i] = (byte)count(i);
        }
        return table;
    }
}
