using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bnn.Engine.Kernels;

/// <summary>The implementations of popcount(a ⊕ b) over word spans, selectable for tests and benchmarks.</summary>
public enum PopCountKernel
{
    /// <summary>Plain loop, <see cref="BitOperations.PopCount(ulong)"/> per word.</summary>
    Scalar,

    /// <summary>Scalar popcnt, four independent accumulators (hides popcnt latency).</summary>
    Unrolled,

    /// <summary>AVX-512BW nibble lookup: vpshufb on each nibble, then vpsadbw to sum bytes into 64-bit lanes.</summary>
    Avx512Lookup,

    /// <summary>AVX2 nibble lookup, 256-bit.</summary>
    Avx2Lookup,

    /// <summary>
    /// Binary convs and dense layers vectorized across filters rather than along the patch: 8 filters' words sit in
    /// one 512-bit register, the patch word is broadcast, and a byte counter counts all 8 at once
    /// (<see cref="FilterBlockedPopCount"/>). Plain spans use <see cref="Avx512Lookup"/>.
    /// </summary>
    Avx512FilterBlocked,

    /// <summary>
    /// <see cref="Avx512FilterBlocked"/> on AVX2 alone: the 8 filters' words in two 256-bit registers
    /// (<see cref="ByteCounter.Avx2Nibble"/>). Plain spans use <see cref="Avx2Lookup"/>.
    /// </summary>
    Avx2FilterBlocked,

    /// <summary>Whatever is fastest on this machine (measured by bnn bench / the benchmarks).</summary>
    Auto,
}

/// <summary>
/// Σ popcount(a[i] ⊕ b[i]): the inner loop of every binary conv and dense layer. The scalar reference is
/// <see cref="Scalar"/>; every vector path must match it for all lengths (tests sweep 0-256 words).
/// </summary>
public static class XorPopCount
{
    /// <summary>
    /// The kernel <see cref="PopCountKernel.Auto"/> resolves to. Measured with BenchmarkDotNet (bench/RESULTS.md,
    /// one CNV image, 1 thread, this 2-core EPYC): Avx512FilterBlocked 67 µs, Scalar 801 µs. Along a single filter
    /// CNV's rows are 1-12 words, too short for a lookup kernel to pay for its setup (Scalar 399 vs Avx512Lookup 252
    /// images/s, session 1); across 8 filters the vector is always full. Without AVX-512BW, the same kernel on AVX2:
    /// 5,560 against 1,150 CNV images/s for Scalar (Zen 5 with .NET's AVX-512 turned off, bench/RESULTS.md).
    /// </summary>
    public static PopCountKernel Best { get; } =
        Avx512BW.IsSupported ? PopCountKernel.Avx512FilterBlocked : Avx2.IsSupported ? PopCountKernel.Avx2FilterBlocked : PopCountKernel.Scalar;

    /// <summary>Kernels usable on this machine.</summary>
    public static IReadOnlyList<PopCountKernel> Supported { get; } =
    [
        PopCountKernel.Scalar,
        PopCountKernel.Unrolled,
        .. Avx2.IsSupported ? new[] { PopCountKernel.Avx2Lookup, PopCountKernel.Avx2FilterBlocked } : [],
        .. Avx512BW.IsSupported ? new[] { PopCountKernel.Avx512Lookup, PopCountKernel.Avx512FilterBlocked } : [],
    ];

    /// <summary>Dispatches to <paramref name="kernel"/>.</summary>
    public static int Compute(ReadOnlySpan<ulong> a, ReadOnlySpan<ulong> b, PopCountKernel kernel = PopCountKernel.Auto)
    {
        if (a.Length != b.Length)
        {
            throw new ArgumentException("spans differ in length");
        }
        return (kernel == PopCountKernel.Auto ? Best : kernel) switch
        {
            PopCountKernel.Scalar => Scalar(a, b),
            PopCountKernel.Unrolled => Unrolled(a, b),
            PopCountKernel.Avx2Lookup or PopCountKernel.Avx2FilterBlocked => Avx2Lookup(a, b),
            PopCountKernel.Avx512Lookup or PopCountKernel.Avx512FilterBlocked => Avx512Lookup(a, b),
            _ => throw new ArgumentOutOfRangeException(nameof(kernel)),
        };
    }

    /// <summary>The reference: one popcount per word.</summary>
    public static int Scalar(ReadOnlySpan<ulong> a, ReadOnlySpan<ulong> b)
    {
        int sum = 0;
        for (int i = 0; i < a.Length; i++)
        {
            sum += BitOperations.PopCount(a[i] ^ b[i]);
        }
        return sum;
    }

    /// <summary>Four accumulators so consecutive popcnt instructions do not wait on one register.</summary>
    public static int Unrolled(ReadOnlySpan<ulong> a, ReadOnlySpan<ulong> b)
    {
        int s0 = 0, s1 = 0, s2 = 0, s3 = 0, i = 0;
        ref ulong ra = ref Unsafe.AsRef(in a.GetPinnableReference());
        ref ulong rb = ref Unsafe.AsRef(in b.GetPinnableReference());
        for (; i + 4 <= a.Length; i += 4)
        {
            s0 += BitOperations.PopCount(Unsafe.Add(ref ra, i) ^ Unsafe.Add(ref rb, i));
            s1 += BitOperations.PopCount(Unsafe.Add(ref ra, i + 1) ^ Unsafe.Add(ref rb, i + 1));
            s2 += BitOperations.PopCount(Unsafe.Add(ref ra, i + 2) ^ Unsafe.Add(ref rb, i + 2));
            s3 += BitOperations.PopCount(Unsafe.Add(ref ra, i + 3) ^ Unsafe.Add(ref rb, i + 3));
        }
        for (; i < a.Length; i++)
        {
            s0 += BitOperations.PopCount(Unsafe.Add(ref ra, i) ^ Unsafe.Add(ref rb, i));
        }
        return s0 + s1 + s2 + s3;
    }

    /// <summary>AVX2 nibble-lookup popcount (Mula's method) on 4 words at a time; scalar tail.</summary>
    public static int Avx2Lookup(ReadOnlySpan<ulong> a, ReadOnlySpan<ulong> b)
    {
        if (!Avx2.IsSupported)
        {
            return Unrolled(a, b);
        }
        var table = Vector256.Create((byte)0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        var low = Vector256.Create((byte)0x0F);
        var acc = Vector256<ulong>.Zero;
        ref ulong ra = ref Unsafe.AsRef(in a.GetPinnableReference());
        ref ulong rb = ref Unsafe.AsRef(in b.GetPinnableReference());
        int i = 0;
        for (; i + 4 <= a.Length; i += 4)
        {
            var x = (Vector256.LoadUnsafe(ref ra, (nuint)i) ^ Vector256.LoadUnsafe(ref rb, (nuint)i)).AsByte();
            var counts = Avx2.Shuffle(table, x & low) + Avx2.Shuffle(table, Avx2.ShiftRightLogical(x.AsUInt16(), 4).AsByte() & low);
            acc += Avx2.SumAbsoluteDifferences(counts, Vector256<byte>.Zero).AsUInt64();
        }
        int sum = (int)Vector256.Sum(acc);
        for (; i < a.Length; i++)
        {
            sum += BitOperations.PopCount(Unsafe.Add(ref ra, i) ^ Unsafe.Add(ref rb, i));
        }
        return sum;
    }

    /// <summary>AVX-512BW nibble-lookup popcount on 8 words at a time; AVX2 then scalar for the tail.</summary>
    public static int Avx512Lookup(ReadOnlySpan<ulong> a, ReadOnlySpan<ulong> b)
    {
        if (!Avx512BW.IsSupported)
        {
            return Avx2Lookup(a, b);
        }
        var table = Vector512.Create((byte)0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        var low = Vector512.Create((byte)0x0F);
        var acc = Vector512<ulong>.Zero;
        ref ulong ra = ref Unsafe.AsRef(in a.GetPinnableReference());
        ref ulong rb = ref Unsafe.AsRef(in b.GetPinnableReference());
        int i = 0;
        for (; i + 8 <= a.Length; i += 8)
        {
            var x = (Vector512.LoadUnsafe(ref ra, (nuint)i) ^ Vector512.LoadUnsafe(ref rb, (nuint)i)).AsByte();
            var counts = Avx512BW.Shuffle(table, x & low) + Avx512BW.Shuffle(table, Avx512BW.ShiftRightLogical(x.AsUInt16(), 4).AsByte() & low);
            acc += Avx512BW.SumAbsoluteDifferences(counts, Vector512<byte>.Zero).AsUInt64();
        }
        int sum = (int)Vector512.Sum(acc);
        return i == a.Length ? sum : sum + Avx2Lookup(a[i..], b[i..]);
    }
}
