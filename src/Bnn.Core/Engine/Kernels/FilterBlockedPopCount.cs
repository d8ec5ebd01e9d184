using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bnn.Engine.Kernels;

/// <summary>
/// Popcounts of one patch against a block of <see cref="Block"/> filters at once: a binary conv as an implicit GEMM
/// whose inner dimension is the patch's words and whose 8 columns share each broadcast patch word. Filters are stored
/// word-interleaved, (block, word, filter): the 8 filters' word t are one 64-byte row. Per patch word this is one
/// broadcast, one load, one XOR and the AVX-512BW nibble lookup (2 vpshufb) into byte counters, which are summed into
/// the 8 per-filter 64-bit lanes with vpsadbw only every 31 words (a byte counter gains at most 8 per word).
/// <see cref="Scalar"/> is the reference every path is tested against.
/// </summary>
internal static class FilterBlockedPopCount
{
    /// <summary>Filters per block: the 64-bit lanes of a 512-bit register.</summary>
    public const int Block = 8;

    private const int WordsPerFlush = 31;

    /// <summary>Bits set in each nibble value, repeated in every 128-bit lane for vpshufb.</summary>
    private static readonly Vector512<byte> NibbleCounts = Vector512.Create((byte)0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);

    /// <summary>Whether the vector path runs here.</summary>
    public static bool IsAccelerated => Avx512BW.IsSupported;

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
    public static void Compute(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, Span<int> counts)
    {
        if (IsAccelerated)
        {
            Avx512F.ConvertToVector256Int32(Avx512Counts(patch, block).AsInt64()).CopyTo(counts);
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
    public static void DotProducts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block, int n, Span<int> dot)
    {
        if (IsAccelerated)
        {
            Write(Vector256.Create(n) - (Avx512F.ConvertToVector256Int32(Avx512Counts(patch, block).AsInt64()) << 1), dot);
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
    public static void DotProducts(ReadOnlySpan<ulong> patchA, ReadOnlySpan<ulong> patchB, ReadOnlySpan<ulong> block, int n, Span<int> dotA, Span<int> dotB)
    {
        if (!IsAccelerated || patchA.Length != patchB.Length)
        {
            DotProducts(patchA, block, n, dotA);
            DotProducts(patchB, block, n, dotB);
            return;
        }
        var (countsA, countsB) = Avx512Counts(patchA, patchB, block);
        Write(Vector256.Create(n) - (Avx512F.ConvertToVector256Int32(countsA.AsInt64()) << 1), dotA);
        Write(Vector256.Create(n) - (Avx512F.ConvertToVector256Int32(countsB.AsInt64()) << 1), dotB);
    }

    /// <summary>
    /// Two patches against every block of an interleaved filter bank (<see cref="Interleave"/>): all
    /// <paramref name="filters"/> dot products of each patch in one call, the conv's inner loop.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotProducts(ReadOnlySpan<ulong> patchA, ReadOnlySpan<ulong> patchB, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dotA, Span<int> dotB)
    {
        int blockWords = patchA.Length * Block;
        for (int first = 0; first < filters; first += Block)
        {
            int count = Math.Min(Block, filters - first);
            DotProducts(patchA, patchB, bank.Slice((first / Block) * blockWords, blockWords), n, dotA.Slice(first, count), dotB.Slice(first, count));
        }
    }

    /// <summary>One patch against every block of an interleaved filter bank: a dense layer's dot products.</summary>
    public static void DotProducts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> bank, int filters, int n, Span<int> dot)
    {
        int blockWords = patch.Length * Block;
        for (int first = 0; first < filters; first += Block)
        {
            DotProducts(patch, bank.Slice((first / Block) * blockWords, blockWords), n, dot.Slice(first, Math.Min(Block, filters - first)));
        }
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

    /// <summary>
    /// Both patches' counts. Words go in threes through a carry-save adder (Harley-Seal's step, two vpternlogq: the
    /// sum bits x₀⊕x₁⊕x₂ and the carry bits maj(x₀, x₁, x₂)), so popcount(x₀) + popcount(x₁) + popcount(x₂) =
    /// popcount(sum) + 2·popcount(carry) costs two nibble lookups instead of three.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (Vector512<ulong> A, Vector512<ulong> B) Avx512Counts(ReadOnlySpan<ulong> patchA, ReadOnlySpan<ulong> patchB, ReadOnlySpan<ulong> block)
    {
        Vector512<ulong> totalA = Vector512<ulong>.Zero, totalB = Vector512<ulong>.Zero;
        Vector512<byte> onesA = Vector512<byte>.Zero, onesB = Vector512<byte>.Zero, twosA = Vector512<byte>.Zero, twosB = Vector512<byte>.Zero;
        ref ulong rw = ref Unsafe.AsRef(in block.GetPinnableReference());
        ref ulong ra = ref Unsafe.AsRef(in patchA.GetPinnableReference());
        ref ulong rb = ref Unsafe.AsRef(in patchB.GetPinnableReference());
        int pending = 0, t = 0, length = patchA.Length;
        for (; t + 3 <= length; t += 3)
        {
            var w0 = Vector512.LoadUnsafe(ref rw, (nuint)(t * Block));
            var w1 = Vector512.LoadUnsafe(ref rw, (nuint)((t + 1) * Block));
            var w2 = Vector512.LoadUnsafe(ref rw, (nuint)((t + 2) * Block));
            var a0 = Vector512.Create(Unsafe.Add(ref ra, t)) ^ w0;
            var a1 = Vector512.Create(Unsafe.Add(ref ra, t + 1)) ^ w1;
            var a2 = Vector512.Create(Unsafe.Add(ref ra, t + 2)) ^ w2;
            var b0 = Vector512.Create(Unsafe.Add(ref rb, t)) ^ w0;
            var b1 = Vector512.Create(Unsafe.Add(ref rb, t + 1)) ^ w1;
            var b2 = Vector512.Create(Unsafe.Add(ref rb, t + 2)) ^ w2;
            onesA += NibbleLookup(Avx512F.TernaryLogic(a0, a1, a2, 0x96).AsByte());
            twosA += NibbleLookup(Avx512F.TernaryLogic(a0, a1, a2, 0xE8).AsByte());
            onesB += NibbleLookup(Avx512F.TernaryLogic(b0, b1, b2, 0x96).AsByte());
            twosB += NibbleLookup(Avx512F.TernaryLogic(b0, b1, b2, 0xE8).AsByte());
            if (++pending == WordsPerFlush)
            {
                totalA += Flush(ref onesA, ref twosA);
                totalB += Flush(ref onesB, ref twosB);
                pending = 0;
            }
        }
        for (; t < length; t++)
        {
            var w = Vector512.LoadUnsafe(ref rw, (nuint)(t * Block));
            onesA += NibbleLookup((Vector512.Create(Unsafe.Add(ref ra, t)) ^ w).AsByte());
            onesB += NibbleLookup((Vector512.Create(Unsafe.Add(ref rb, t)) ^ w).AsByte());
        }
        return (totalA + Flush(ref onesA, ref twosA), totalB + Flush(ref onesB, ref twosB));
    }

    /// <summary>Bits set per byte: two vpshufb lookups of the nibbles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<byte> NibbleLookup(Vector512<byte> x)
    {
        var low = Vector512.Create((byte)0x0F);
        return Avx512BW.Shuffle(NibbleCounts, x & low) + Avx512BW.Shuffle(NibbleCounts, Avx512BW.ShiftRightLogical(x.AsUInt16(), 4).AsByte() & low);
    }

    /// <summary>Sums the byte counters (ones + 2·twos) into the 8 per-filter lanes and clears them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Flush(ref Vector512<byte> ones, ref Vector512<byte> twos)
    {
        var sum = Avx512BW.SumAbsoluteDifferences(ones, Vector512<byte>.Zero).AsUInt64()
            + (Avx512BW.SumAbsoluteDifferences(twos, Vector512<byte>.Zero).AsUInt64() << 1);
        ones = Vector512<byte>.Zero;
        twos = Vector512<byte>.Zero;
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector512<ulong> Avx512Counts(ReadOnlySpan<ulong> patch, ReadOnlySpan<ulong> block)
    {
        var total = Vector512<ulong>.Zero;
        var bytes = Vector512<byte>.Zero;
        ref ulong rw = ref Unsafe.AsRef(in block.GetPinnableReference());
        ref ulong rp = ref Unsafe.AsRef(in patch.GetPinnableReference());
        int pending = 0;
        for (int t = 0; t < patch.Length; t++)
        {
            bytes += NibbleLookup((Vector512.Create(Unsafe.Add(ref rp, t)) ^ Vector512.LoadUnsafe(ref rw, (nuint)(t * Block))).AsByte());
            if (++pending == WordsPerFlush)
            {
                total += Avx512BW.SumAbsoluteDifferences(bytes, Vector512<byte>.Zero).AsUInt64();
                bytes = Vector512<byte>.Zero;
                pending = 0;
            }
        }
        return total + Avx512BW.SumAbsoluteDifferences(bytes, Vector512<byte>.Zero).AsUInt64();
    }
}
