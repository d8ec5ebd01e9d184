using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bnn.Engine.Kernels;

/// <summary>
/// How the vector kernels count the set bits of each byte of the 8 filters' lanes, and so which registers hold them.
/// <see cref="Vbmi"/> needs AVX-512 VBMI (Ice Lake, Zen 4 and later); <see cref="Nibble"/> needs AVX-512BW;
/// <see cref="Avx2Nibble"/> only AVX2. A kernel asked for a counter the CPU lacks throws
/// <see cref="PlatformNotSupportedException"/> (see <c>FilterBlockedPopCount.SupportedCounters</c>).
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

    /// <summary>
    /// <see cref="Nibble"/> on 256-bit registers, for x86 hosts without AVX-512 (Zen 3, client Intel): each block is
    /// counted in two passes, filters 0-3 then 4-7. Without vpternlogq the carry-save adder takes 5 ops instead of 2
    /// (sum a⊕b⊕c, carry (a∧b)∨(c∧(a⊕b)), a⊕b shared).
    /// </summary>
    Avx2Nibble,
}

/// <summary>
/// Popcounts of one patch against a block of <see cref="Block"/> filters at once: a binary conv as an implicit GEMM
/// whose inner dimension is the patch's words and whose 8 columns share each broadcast patch word. Filters are stored
/// word-interleaved, (block, word, filter): the 8 filters' word t are one 64-byte row, one 512-bit register (or two
/// 256-bit passes, <see cref="IFilterLanes{TSelf, TVec}"/>). Per patch word this is one broadcast, one load and one
/// XOR; words then go in threes through a carry-save adder (Harley-Seal's step, two vpternlogq: the sum bits
/// x₀⊕x₁⊕x₂ and the carry bits maj(x₀, x₁, x₂)), so that popcount(x₀) + popcount(x₁) + popcount(x₂) =
/// popcount(sum) + 2·popcount(carry), counted per byte (<see cref="ByteCounter"/>) into byte counters.
/// Those are summed into the 8 per-filter 64-bit lanes with vpsadbw only when they could overflow.
/// <see cref="Scalar"/> is the reference every path is tested against.
/// </summary>
internal static class FilterBlockedPopCount
{
    /// <summary>Filters per block: the 64-bit lanes of a 512-bit register (or of two 256-bit ones).</summary>
    public const int Block = 8;

    /// <summary>
    /// Byte-counter capacity in units of one word's worst case (8 per byte): a triple costs 3 (8 + 2·8 = 24), a lone
    /// word 1, and 31·8 = 248 ≤ 255.
    /// </summary>
    private const int FlushUnits = 31;

    /// <summary>Whether the vector path runs here (AVX2 at least).</summary>
    public static bool IsAccelerated => Avx2.IsSupported;

    /// <summary>
    /// The byte counter the vector path uses here: that of <see cref="XorPopCount.Best"/> (the widest registers, and VBMI
    /// where the CPU has it). Without AVX2 nothing reads it.
    /// </summary>
    public static ByteCounter Counter { get; } = CounterFor(XorPopCount.Best) ?? ByteCounter.Avx2Nibble;

    /// <summary>Byte counters usable on this machine (none without AVX2).</summary>
    public static IReadOnlyList<ByteCounter> SupportedCounters { get; } =
    [
        .. Avx2.IsSupported ? new[] { ByteCounter.Avx2Nibble } : [],
        .. Avx512BW.IsSupported ? new[] { ByteCounter.Nibble } : [],
        .. Avx512Vbmi.IsSupported ? new[] { ByteCounter.Vbmi } : [],
    ];

    /// <summary>The byte counter a filter-blocked <paramref name="kernel"/> runs with; null for the kernels that are not filter-blocked.</summary>
    public static ByteCounter? CounterFor(PopCountKernel kernel) => kernel switch
    {
        PopCountKernel.Avx512FilterBlocked => Avx512Vbmi.IsSupported ? ByteCounter.Vbmi : ByteCounter.Nibble,
        PopCountKernel.Avx2FilterBlocked => ByteCounter.Avx2Nibble,
        _ => null,
    };

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
            Counts(patch, block, counter).CopyTo(counts);
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
            Write(Vector256.Create(n) - (Counts(patch, block, counter) << 1), dot);
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
        switch (counter)
        {
            case ByteCounter.Vbmi:
                Blocked<Lanes512, Vector512<ulong>, VbmiBytes>.BankPair(VbmiBytes.Create(), patchA, patchB, bank, filters, n, dotA, dotB);
                break;
            case ByteCounter.Nibble:
                Blocked<Lanes512, Vector512<ulong>, NibbleBytes>.BankPair(NibbleBytes.Create(), patchA, patchB, bank, filters, n, dotA, dotB);
                break;
            case ByteCounter.Avx2Nibble:
                Blocked<Lanes256, Vector256<ulong>, Avx2NibbleBytes>.BankPair(Avx2NibbleBytes.Create(), patchA, patchB, bank, filters, n, dotA, dotB);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(counter));
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
        switch (counter)
        {
            case ByteCounter.Vbmi:
                Blocked<Lanes512, Vector512<ulong>, VbmiBytes>.BankQuad(VbmiBytes.Create(), patches, bank, filters, n, dots);
                break;
            case ByteCounter.Nibble:
                Blocked<Lanes512, Vector512<ulong>, NibbleBytes>.BankQuad(NibbleBytes.Create(), patches, bank, filters, n, dots);
                break;
            case ByteCounter.Avx2Nibble:
                Blocked<Lanes256, Vector256<ulong>, Avx2NibbleBytes>.BankQuad(Avx2NibbleBytes.Create(), patches, bank, filters, n, dots);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(counter));
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
                Blocked<Lanes512, Vector512<ulong>, VbmiBytes>.ThresholdQuad(VbmiBytes.Create(), ref Word(source, starts[0]), ref Word(source, starts[1]), ref Word(source, starts[2]),
                    ref Word(source, starts[3]), rows, rowWords, stride, bank, filters, n, pairedBounds, flips, output);
                break;
            case ByteCounter.Nibble:
                Blocked<Lanes512, Vector512<ulong>, NibbleBytes>.ThresholdQuad(NibbleBytes.Create(), ref Word(source, starts[0]), ref Word(source, starts[1]), ref Word(source, starts[2]),
                    ref Word(source, starts[3]), rows, rowWords, stride, bank, filters, n, pairedBounds, flips, output);
                break;
            case ByteCounter.Avx2Nibble:
                Blocked<Lanes256, Vector256<ulong>, Avx2NibbleBytes>.ThresholdQuad(Avx2NibbleBytes.Create(), ref Word(source, starts[0]), ref Word(source, starts[1]),
                    ref Word(source, starts[2]), ref Word(source, starts[3]), rows, rowWords, stride, bank, filters, n, pairedBounds, flips, output);
                break;
            case null:
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
            default:
                throw new ArgumentOutOfRangeException(nameof(counter));
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
        switch (counter)
        {
            case ByteCounter.Vbmi:
                Blocked<Lanes512, Vector512<ulong>, VbmiBytes>.BankSingle(VbmiBytes.Create(), patch, bank, filters, n, dot);
                break;
            case ByteCounter.Nibble:
                Blocked<Lanes512, Vector512<ulong>, NibbleBytes>.BankSingle(NibbleBytes.Create(), patch, bank, filters, n, dot);
                break;
            case ByteCounter.Avx2Nibble:
                Blocked<Lanes256, Vector256<ulong>, Avx2NibbleBytes>.BankSingle(Avx2NibbleBytes.Create(), patch, bank, filters, n, dot);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(counter));
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

    /// <summary>The 8 counts of one patch against one block, through <paramref name="counter"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector256<int> Counts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, ByteCounter counter) => counter switch
    {
        ByteCounter.Vbmi => Blocked<Lanes512, Vector512<ulong>, VbmiBytes>.Counts(VbmiBytes.Create(), patch, block),
        ByteCounter.Nibble => Blocked<Lanes512, Vector512<ulong>, NibbleBytes>.Counts(NibbleBytes.Create(), patch, block),
        ByteCounter.Avx2Nibble => Blocked<Lanes256, Vector256<ulong>, Avx2NibbleBytes>.Counts(Avx2NibbleBytes.Create(), patch, block),
        _ => throw new ArgumentOutOfRangeException(nameof(counter)),
    };

    /// <summary>
    /// The kernels, written once over the register shape that holds a block's filter lanes and the byte counter that
    /// goes with it; the JIT specializes each triple, so the abstraction costs nothing at run time. A 512-bit register
    /// holds all 8 lanes. 256-bit registers hold 4, and each block is counted in two passes, filters 0-3 then 4-7: with
    /// AVX2's 16 registers, four positions' accumulators for all 8 lanes at once would spill.
    /// </summary>
    private static class Blocked<TLanes, TVec, TBytes>
        where TLanes : struct, IFilterLanes<TLanes, TVec>
        where TVec : struct
        where TBytes : struct, IByteCounts<TBytes, TVec>
    {
        /// <summary>Where a block row's second pass starts: the second half of its 8 words.</summary>
        private const int SecondPass = Block / 2;

        /// <summary>The 8 counts of one patch against one block.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Counts(TBytes bytes, ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block)
        {
            ref ulong rw = ref Unsafe.AsRef(in block.GetPinnableReference());
            var first = SingleCounts(bytes, patch, ref rw);
            var second = TLanes.TwoPasses ? SingleCounts(bytes, patch, ref Unsafe.Add(ref rw, SecondPass)) : default;
            return TLanes.Narrow(first, second);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static void BankSingle(TBytes bytes, ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dot)
        {
            int blockWords = patch.Length * Block;
            var nn = Vector256.Create(n);
            for (int first = 0; first < filters; first += Block)
            {
                var counts = Counts(bytes, patch, bank.Slice((first / Block) * blockWords, blockWords));
                Write(nn - (counts << 1), dot.Slice(first, Math.Min(Block, filters - first)));
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static void BankPair(TBytes bytes, ReadOnlySpan<ulong> patchA, ReadOnlySpan<ulong> patchB, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dotA, Span<int> dotB)
        {
            int words = patchA.Length, blockWords = words * Block;
            ref ulong a = ref Unsafe.AsRef(in patchA.GetPinnableReference());
            ref ulong b = ref Unsafe.AsRef(in patchB.GetPinnableReference());
            ref ulong w = ref Unsafe.AsRef(in bank.GetPinnableReference());
            for (int first = 0; first < filters; first += Block)
            {
                ref ulong block = ref Unsafe.Add(ref w, (first / Block) * blockWords);
                var (a0, b0) = PairCounts(bytes, ref a, ref b, words, ref block);
                var (a1, b1) = TLanes.TwoPasses ? PairCounts(bytes, ref a, ref b, words, ref Unsafe.Add(ref block, SecondPass)) : default;
                var (dotsA, dotsB) = TLanes.Dots(a0, a1, b0, b1, n);
                int count = Math.Min(Block, filters - first);
                Write(dotsA, dotA.Slice(first, count));
                Write(dotsB, dotB.Slice(first, count));
            }
        }

        /// <summary>
        /// Each block's 16 dot products (two positions' 8) are compared with the paired bounds at once
        /// (<see cref="IFilterLanes{TSelf, TVec}.AtLeast"/>); the 16-bit mask's halves land at the block's place in each
        /// position's word, which is written once its 8 blocks are in.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static void ThresholdQuad(TBytes bytes, ref ulong a, ref ulong b, ref ulong c, ref ulong d, int rows, int rowWords, int stride,
            ReadOnlySpan<ulong> bank, int filters, int n, ReadOnlySpan<int> pairedBounds, ReadOnlySpan<ulong> flips, Span<ulong> output)
        {
            int blockWords = rows * rowWords * Block, outWords = BitConvention.Words(filters);
            ref ulong w = ref Unsafe.AsRef(in bank.GetPinnableReference());
            ref int bound = ref Unsafe.AsRef(in pairedBounds.GetPinnableReference());
            ulong geAB = 0, geCD = 0, geAB2 = 0, geCD2 = 0;
            for (int first = 0; first < filters; first += Block)
            {
                ref ulong block = ref Unsafe.Add(ref w, (first / Block) * blockWords);
                var (a0, b0, c0, d0) = QuadCounts(bytes, ref a, ref b, ref c, ref d, rows, rowWords, stride, ref block);
                var (a1, b1, c1, d1) = TLanes.TwoPasses
                    ? QuadCounts(bytes, ref a, ref b, ref c, ref d, rows, rowWords, stride, ref Unsafe.Add(ref block, SecondPass))
                    : default;
                ref int bounds16 = ref Unsafe.Add(ref bound, first * 2);
                // Bits 0-7 of each mask are the first position's, 8-15 the second's; each position gathers its word's
                // 64 bits, a byte per block, in a register of its own.
                int slot = (first >> 3) & 7;
                ulong maskAB = TLanes.AtLeast(a0, a1, b0, b1, n, ref bounds16);
                ulong maskCD = TLanes.AtLeast(c0, c1, d0, d1, n, ref bounds16);
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
        public static void BankQuad(TBytes bytes, ReadOnlySpan<ulong> patches, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dots)
        {
            int words = patches.Length / 4, blockWords = words * Block;
            ref ulong a = ref Unsafe.AsRef(in patches.GetPinnableReference());
            ref ulong b = ref Unsafe.Add(ref a, words);
            ref ulong c = ref Unsafe.Add(ref b, words);
            ref ulong d = ref Unsafe.Add(ref c, words);
            ref ulong w = ref Unsafe.AsRef(in bank.GetPinnableReference());
            for (int first = 0; first < filters; first += Block)
            {
                ref ulong block = ref Unsafe.Add(ref w, (first / Block) * blockWords);
                var (a0, b0, c0, d0) = QuadCounts(bytes, ref a, ref b, ref c, ref d, 1, words, words, ref block);
                var (a1, b1, c1, d1) = TLanes.TwoPasses ? QuadCounts(bytes, ref a, ref b, ref c, ref d, 1, words, words, ref Unsafe.Add(ref block, SecondPass)) : default;
                var (dotsA, dotsB) = TLanes.Dots(a0, a1, b0, b1, n);
                var (dotsC, dotsD) = TLanes.Dots(c0, c1, d0, d1, n);
                int count = Math.Min(Block, filters - first);
                Write(dotsA, dots.Slice(first, count));
                Write(dotsB, dots.Slice(filters + first, count));
                Write(dotsC, dots.Slice((2 * filters) + first, count));
                Write(dotsD, dots.Slice((3 * filters) + first, count));
            }
        }

        /// <summary>
        /// Four patches' counts, per filter lane, each filter row loaded once for all four. A patch is
        /// <paramref name="rows"/> runs of <paramref name="rowWords"/> words, <paramref name="stride"/> words apart in its
        /// source (one run for a gathered patch), and the filter block holds the same words back to back.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static (TVec A, TVec B, TVec C, TVec D) QuadCounts(
            TBytes bytes, ref ulong ra, ref ulong rb, ref ulong rc, ref ulong rd, int rows, int rowWords, int stride, ref ulong rw)
        {
            TVec totalA = default, totalB = default, totalC = default, totalD = default;
            TVec accA = default, accB = default, accC = default, accD = default;
            int units = 0;
            for (int r = 0, row = 0; r < rows; r++, row += stride, rw = ref Unsafe.Add(ref rw, rowWords * Block))
            {
                int t = 0;
                for (; t + 3 <= rowWords; t += 3)
                {
                    if (units > FlushUnits - 3)
                    {
                        totalA = Flush(totalA, accA);
                        accA = default;
                        totalB = Flush(totalB, accB);
                        accB = default;
                        totalC = Flush(totalC, accC);
                        accC = default;
                        totalD = Flush(totalD, accD);
                        accD = default;
                        units = 0;
                    }
                    var w0 = TLanes.Load(ref rw, t);
                    var w1 = TLanes.Load(ref rw, t + 1);
                    var w2 = TLanes.Load(ref rw, t + 2);
                    accA = TLanes.AddBytes(accA, Triple(bytes, ref ra, row + t, w0, w1, w2));
                    accB = TLanes.AddBytes(accB, Triple(bytes, ref rb, row + t, w0, w1, w2));
                    accC = TLanes.AddBytes(accC, Triple(bytes, ref rc, row + t, w0, w1, w2));
                    accD = TLanes.AddBytes(accD, Triple(bytes, ref rd, row + t, w0, w1, w2));
                    units += 3;
                }
                for (; t < rowWords; t++)
                {
                    if (units > FlushUnits - 1)
                    {
                        totalA = Flush(totalA, accA);
                        accA = default;
                        totalB = Flush(totalB, accB);
                        accB = default;
                        totalC = Flush(totalC, accC);
                        accC = default;
                        totalD = Flush(totalD, accD);
                        accD = default;
                        units = 0;
                    }
                    var wt = TLanes.Load(ref rw, t);
                    accA = TLanes.AddBytes(accA, bytes.Count(TLanes.XorWord(wt, Unsafe.Add(ref ra, row + t))));
                    accB = TLanes.AddBytes(accB, bytes.Count(TLanes.XorWord(wt, Unsafe.Add(ref rb, row + t))));
                    accC = TLanes.AddBytes(accC, bytes.Count(TLanes.XorWord(wt, Unsafe.Add(ref rc, row + t))));
                    accD = TLanes.AddBytes(accD, bytes.Count(TLanes.XorWord(wt, Unsafe.Add(ref rd, row + t))));
                    units++;
                }
            }
            return (Flush(totalA, accA), Flush(totalB, accB), Flush(totalC, accC), Flush(totalD, accD));
        }

        /// <summary>Patch words t..t+2 against the filter rows: their XORs through the carry-save adder, counted per byte.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static TVec Triple(TBytes bytes, ref ulong patch, int t, TVec w0, TVec w1, TVec w2)
        {
            var x0 = TLanes.XorWord(w0, Unsafe.Add(ref patch, t));
            var x1 = TLanes.XorWord(w1, Unsafe.Add(ref patch, t + 1));
            var x2 = TLanes.XorWord(w2, Unsafe.Add(ref patch, t + 2));
            return bytes.CountSumAndCarry(TLanes.Sum3(x0, x1, x2), TLanes.Carry3(x0, x1, x2));
        }

        /// <summary>Both patches' counts, per filter lane, through the carry-save triples.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static (TVec A, TVec B) PairCounts(TBytes bytes, ref ulong ra, ref ulong rb, int words, ref ulong rw)
        {
            TVec totalA = default, totalB = default, accA = default, accB = default;
            int units = 0, t = 0;
            for (; t + 3 <= words; t += 3)
            {
                if (units > FlushUnits - 3)
                {
                    totalA = Flush(totalA, accA);
                    accA = default;
                    totalB = Flush(totalB, accB);
                    accB = default;
                    units = 0;
                }
                var w0 = TLanes.Load(ref rw, t);
                var w1 = TLanes.Load(ref rw, t + 1);
                var w2 = TLanes.Load(ref rw, t + 2);
                accA = TLanes.AddBytes(accA, Triple(bytes, ref ra, t, w0, w1, w2));
                accB = TLanes.AddBytes(accB, Triple(bytes, ref rb, t, w0, w1, w2));
                units += 3;
            }
            // At most two lone words remain.
            if (units > FlushUnits - (words - t))
            {
                totalA = Flush(totalA, accA);
                accA = default;
                totalB = Flush(totalB, accB);
                accB = default;
            }
            for (; t < words; t++)
            {
                var wt = TLanes.Load(ref rw, t);
                accA = TLanes.AddBytes(accA, bytes.Count(TLanes.XorWord(wt, Unsafe.Add(ref ra, t))));
                accB = TLanes.AddBytes(accB, bytes.Count(TLanes.XorWord(wt, Unsafe.Add(ref rb, t))));
            }
            return (Flush(totalA, accA), Flush(totalB, accB));
        }

        /// <summary>One patch's counts, per filter lane, through the carry-save triples.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static TVec SingleCounts(TBytes bytes, ReadOnlySpan<ulong> patch, ref ulong rw)
        {
            TVec total = default, acc = default;
            ref ulong rp = ref Unsafe.AsRef(in patch.GetPinnableReference());
            int units = 0, t = 0, length = patch.Length;
            for (; t + 3 <= length; t += 3)
            {
                if (units > FlushUnits - 3)
                {
                    total = Flush(total, acc);
                    acc = default;
                    units = 0;
                }
                acc = TLanes.AddBytes(acc, Triple(bytes, ref rp, t, TLanes.Load(ref rw, t), TLanes.Load(ref rw, t + 1), TLanes.Load(ref rw, t + 2)));
                units += 3;
            }
            // At most two lone words remain.
            if (units > FlushUnits - (length - t))
            {
                total = Flush(total, acc);
                acc = default;
            }
            for (; t < length; t++)
            {
                acc = TLanes.AddBytes(acc, bytes.Count(TLanes.XorWord(TLanes.Load(ref rw, t), Unsafe.Add(ref rp, t))));
            }
            return Flush(total, acc);
        }

        /// <summary>
        /// <paramref name="total"/> plus the byte counters summed into the 8 per-filter lanes; the caller clears them
        /// (by value, not by ref: a by-ref local can keep the JIT from holding it in a register).
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static TVec Flush(TVec total, TVec bytes) => TLanes.AddLongs(total, TLanes.SumBytes(bytes));
    }

    /// <summary>
    /// The operations the kernels need on a block's 8 filter lanes (64 bits each), held in <typeparamref name="TVec"/>:
    /// each a single instruction, or two on two 256-bit halves. The operations live apart from the value so that the
    /// 512-bit kernels keep working on a bare <see cref="Vector512{T}"/>.
    /// </summary>
    private interface IFilterLanes<TSelf, TVec>
        where TSelf : struct, IFilterLanes<TSelf, TVec>
        where TVec : struct
    {
        /// <summary>Whether <typeparamref name="TVec"/> holds half a block's lanes, so each block takes two passes.</summary>
        static abstract bool TwoPasses { get; }

        /// <summary>Row <paramref name="word"/> of a block: the 8 filters' word, 8 consecutive ulongs.</summary>
        static abstract TVec Load(ref ulong block, int word);

        /// <summary>A filter row XOR the patch word broadcast to every lane.</summary>
        static abstract TVec XorWord(TVec row, ulong word);

        /// <summary>The carry-save adder's sum bits, a ⊕ b ⊕ c.</summary>
        static abstract TVec Sum3(TVec a, TVec b, TVec c);

        /// <summary>The carry-save adder's carry bits, the majority of a, b and c.</summary>
        static abstract TVec Carry3(TVec a, TVec b, TVec c);

        /// <summary>Bytewise sum (byte counters; they never exceed 255, see <c>FlushUnits</c>).</summary>
        static abstract TVec AddBytes(TVec a, TVec b);

        /// <summary>Lanewise 64-bit sum.</summary>
        static abstract TVec AddLongs(TVec a, TVec b);

        /// <summary>Each lane's 8 byte counters summed into the lane (vpsadbw against zero).</summary>
        static abstract TVec SumBytes(TVec bytes);

        /// <summary>A block's 8 counts as int32 (they are far below 2³¹), from its passes' (the second unused in one pass).</summary>
        static abstract Vector256<int> Narrow(TVec first, TVec second);

        /// <summary>Two positions' dot products n − 2·count, from each one's passes.</summary>
        static abstract (Vector256<int> A, Vector256<int> B) Dots(TVec firstA, TVec secondA, TVec firstB, TVec secondB, int n);

        /// <summary>
        /// Which of two positions' 16 dot products reach their bounds (<paramref name="bounds16"/>: the block's 8 bounds
        /// twice): bit j for position A's filter j, bit 8 + j for B's.
        /// </summary>
        static abstract ulong AtLeast(TVec firstA, TVec secondA, TVec firstB, TVec secondB, int n, ref int bounds16);
    }

    /// <summary>The 8 lanes in one 512-bit register (AVX-512F/BW).</summary>
    private readonly struct Lanes512 : IFilterLanes<Lanes512, Vector512<ulong>>
    {
        public static bool TwoPasses => false;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<ulong> Load(ref ulong block, int word) => Vector512.LoadUnsafe(ref block, (nuint)(word * Block));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<ulong> XorWord(Vector512<ulong> row, ulong word) => Vector512.Create(word) ^ row;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<ulong> Sum3(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c) => Avx512F.TernaryLogic(a, b, c, 0x96);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<ulong> Carry3(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c) => Avx512F.TernaryLogic(a, b, c, 0xE8);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<ulong> AddBytes(Vector512<ulong> a, Vector512<ulong> b) => (a.AsByte() + b.AsByte()).AsUInt64();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<ulong> AddLongs(Vector512<ulong> a, Vector512<ulong> b) => a + b;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<ulong> SumBytes(Vector512<ulong> bytes) => Avx512BW.SumAbsoluteDifferences(bytes.AsByte(), Vector512<byte>.Zero).AsUInt64();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Narrow(Vector512<ulong> first, Vector512<ulong> second) => Avx512F.ConvertToVector256Int32(first.AsInt64());

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector256<int> A, Vector256<int> B) Dots(Vector512<ulong> firstA, Vector512<ulong> secondA, Vector512<ulong> firstB, Vector512<ulong> secondB, int n)
        {
            var dots = PairDots(firstA, firstB, n);
            return (dots.GetLower(), dots.GetUpper());
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static ulong AtLeast(Vector512<ulong> firstA, Vector512<ulong> secondA, Vector512<ulong> firstB, Vector512<ulong> secondB, int n, ref int bounds16) =>
            Vector512.GreaterThanOrEqual(PairDots(firstA, firstB, n), Vector512.LoadUnsafe(ref bounds16)).ExtractMostSignificantBits();

        /// <summary>The low dwords of both positions' 8 counts, side by side: one shift and subtract for all 16.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<int> PairDots(Vector512<ulong> countsA, Vector512<ulong> countsB, int n) =>
            Vector512.Create(n) - (Avx512F.PermuteVar16x32x2(countsA.AsInt32(), Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), countsB.AsInt32()) << 1);
    }

    /// <summary>Half a block's lanes, 4 filters, in one 256-bit register (AVX2).</summary>
    private readonly struct Lanes256 : IFilterLanes<Lanes256, Vector256<ulong>>
    {
        public static bool TwoPasses => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<ulong> Load(ref ulong block, int word) => Vector256.LoadUnsafe(ref block, (nuint)(word * Block));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<ulong> XorWord(Vector256<ulong> row, ulong word) => Vector256.Create(word) ^ row;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<ulong> Sum3(Vector256<ulong> a, Vector256<ulong> b, Vector256<ulong> c) => a ^ b ^ c;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<ulong> Carry3(Vector256<ulong> a, Vector256<ulong> b, Vector256<ulong> c) => (a & b) | (c & (a ^ b));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<ulong> AddBytes(Vector256<ulong> a, Vector256<ulong> b) => (a.AsByte() + b.AsByte()).AsUInt64();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<ulong> AddLongs(Vector256<ulong> a, Vector256<ulong> b) => a + b;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<ulong> SumBytes(Vector256<ulong> bytes) => Avx2.SumAbsoluteDifferences(bytes.AsByte(), Vector256<byte>.Zero).AsUInt64();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Narrow(Vector256<ulong> first, Vector256<ulong> second) => Vector256.Narrow(first.AsInt64(), second.AsInt64());

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector256<int> A, Vector256<int> B) Dots(Vector256<ulong> firstA, Vector256<ulong> secondA, Vector256<ulong> firstB, Vector256<ulong> secondB, int n)
        {
            var nn = Vector256.Create(n);
            return (nn - (Narrow(firstA, secondA) << 1), nn - (Narrow(firstB, secondB) << 1));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static ulong AtLeast(Vector256<ulong> firstA, Vector256<ulong> secondA, Vector256<ulong> firstB, Vector256<ulong> secondB, int n, ref int bounds16)
        {
            var (dotsA, dotsB) = Dots(firstA, secondA, firstB, secondB, n);
            return Vector256.GreaterThanOrEqual(dotsA, Vector256.LoadUnsafe(ref bounds16)).ExtractMostSignificantBits()
                | (Vector256.GreaterThanOrEqual(dotsB, Vector256.LoadUnsafe(ref bounds16, Block)).ExtractMostSignificantBits() << 8);
        }
    }

    /// <summary>
    /// A per-byte bit counter for one register shape. Its tables are fields, so a kernel loads them once and the JIT
    /// keeps them in registers for the whole loop (static readonly vectors are not constants in methods compiled
    /// before the class initializes).
    /// </summary>
    private interface IByteCounts<TSelf, TVec>
        where TSelf : struct, IByteCounts<TSelf, TVec>
        where TVec : struct
    {
        static abstract TSelf Create();

        /// <summary>Bits set in each byte of <paramref name="x"/> (at most 8).</summary>
        TVec Count(TVec x);

        /// <summary>Bits set in each byte of <paramref name="sum"/> plus twice those of <paramref name="carry"/> (at most 24).</summary>
        TVec CountSumAndCarry(TVec sum, TVec carry);
    }

    private static readonly byte[] Nibbles = Table(i => BitOperations.PopCount((uint)(i & 15)));

    private readonly struct NibbleBytes(Vector512<byte> table) : IByteCounts<NibbleBytes, Vector512<ulong>>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static NibbleBytes Create() => new(Vector512.Create(Nibbles));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<ulong> Count(Vector512<ulong> lanes)
        {
            var low = Vector512.Create((byte)0x0F);
            var x = lanes.AsByte();
            return (Avx512BW.Shuffle(table, x & low) + Avx512BW.Shuffle(table, Avx512BW.ShiftRightLogical(x.AsUInt16(), 4).AsByte() & low)).AsUInt64();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<ulong> CountSumAndCarry(Vector512<ulong> sum, Vector512<ulong> carry)
        {
            var c = Count(carry).AsByte();
            return (Count(sum).AsByte() + c + c).AsUInt64();
        }
    }

    /// <summary>The nibble lookup on 256 bits (vpshufb looks up within 128-bit lanes, so the 16-byte table twice).</summary>
    private readonly struct Avx2NibbleBytes(Vector256<byte> table) : IByteCounts<Avx2NibbleBytes, Vector256<ulong>>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Avx2NibbleBytes Create() => new(Vector256.Create(Nibbles.AsSpan(0, Vector256<byte>.Count)));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<ulong> Count(Vector256<ulong> lanes)
        {
            var low = Vector256.Create((byte)0x0F);
            var x = lanes.AsByte();
            return (Avx2.Shuffle(table, x & low) + Avx2.Shuffle(table, Avx2.ShiftRightLogical(lanes.AsUInt16(), 4).AsByte() & low)).AsUInt64();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<ulong> CountSumAndCarry(Vector256<ulong> sum, Vector256<ulong> carry)
        {
            var c = Count(carry).AsByte();
            return (Count(sum).AsByte() + c + c).AsUInt64();
        }
    }

    /// <summary>
    /// vpermb reads the low 6 bits of each index byte. Bits 0-5 of the sum and of the carry are one lookup each (the
    /// carry's table holds doubled counts). Their bits 6-7 are gathered into one index, sum's at bits 0-1 (a 16-bit
    /// shift right by 6) and carry's at bits 2-3 (by 4), for a third table that ignores bits 4-5, where the shifts
    /// bring in the next byte's bits.
    /// </summary>
    private readonly struct VbmiBytes(Vector512<byte> low6, Vector512<byte> low6Twice, Vector512<byte> topBits, Vector512<byte> top2) : IByteCounts<VbmiBytes, Vector512<ulong>>
    {
        private static readonly byte[] Low6 = Table(i => BitOperations.PopCount((uint)i));
        private static readonly byte[] Low6Twice = Table(i => 2 * BitOperations.PopCount((uint)i));
        private static readonly byte[] TopBits = Table(i => BitOperations.PopCount((uint)(i & 3)) + (2 * BitOperations.PopCount((uint)((i >> 2) & 3))));
        private static readonly byte[] Top2 = Table(i => BitOperations.PopCount((uint)(i >> 4)));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static VbmiBytes Create() => new(Vector512.Create(Low6), Vector512.Create(Low6Twice), Vector512.Create(TopBits), Vector512.Create(Top2));

        /// <summary>Bits 0-5 directly; bits 6-7, shifted right by 2, are index bits 4-5 of the fourth table.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<ulong> Count(Vector512<ulong> lanes)
        {
            var x = lanes.AsByte();
            return (Avx512Vbmi.PermuteVar64x8(low6, x) + Avx512Vbmi.PermuteVar64x8(top2, Avx512BW.ShiftRightLogical(x.AsUInt16(), 2).AsByte())).AsUInt64();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<ulong> CountSumAndCarry(Vector512<ulong> sumLanes, Vector512<ulong> carryLanes)
        {
            var sum = sumLanes.AsByte();
            var carry = carryLanes.AsByte();
            // (a & mask) | (b & ~mask): bits 0-1 from the shifted sum, the rest from the shifted carry.
            var top = Avx512F.TernaryLogic(
                Avx512BW.ShiftRightLogical(sum.AsUInt16(), 6).AsByte(),
                Avx512BW.ShiftRightLogical(carry.AsUInt16(), 4).AsByte(),
                Vector512.Create((byte)3), 0xE4);
            return (Avx512Vbmi.PermuteVar64x8(low6, sum) + Avx512Vbmi.PermuteVar64x8(low6Twice, carry) + Avx512Vbmi.PermuteVar64x8(topBits, top)).AsUInt64();
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
