using BenchmarkDotNet.Attributes;
using Bnn.Engine.Kernels;

namespace Bnn.Benchmarks;

/// <summary>
/// Σ popcount(a ⊕ b) over one row of words, per kernel. 3, 9 and 36 words are CNV's 3x3 rows and patches at 64 and
/// 256 channels; 72 is a 3x3 patch of 512 channels (BinaryNet-VGG). The filter-blocked kernel counts 8 filters per
/// call, so its time is for 8 rows; the pair kernel (two patches per filter load, words added in threes through a
/// carry-save adder) counts 16, with this machine's byte counter, with the AVX-512 nibble lookup and on AVX2 alone.
/// </summary>
[MemoryDiagnoser]
public class PopCountBenchmarks
{
    private ulong[] a = [];
    private ulong[] b = [];
    private ulong[] block = [];
    private readonly int[] counts = new int[FilterBlockedPopCount.Block];
    private readonly int[] second = new int[FilterBlockedPopCount.Block];

    [Params(3, 9, 36, 72)]
    public int Words { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        a = Enumerable.Range(0, Words).Select(_ => (ulong)rng.NextInt64()).ToArray();
        b = Enumerable.Range(0, Words).Select(_ => (ulong)rng.NextInt64()).ToArray();
        block = Enumerable.Range(0, Words * FilterBlockedPopCount.Block).Select(_ => (ulong)rng.NextInt64()).ToArray();
    }

    [Benchmark(Baseline = true)]
    public int Scalar() => XorPopCount.Scalar(a, b);

    [Benchmark]
    public int Unrolled() => XorPopCount.Unrolled(a, b);

    [Benchmark]
    public int Avx2Lookup() => XorPopCount.Avx2Lookup(a, b);

    [Benchmark]
    public int Avx512Lookup() => XorPopCount.Avx512Lookup(a, b);

    [Benchmark(OperationsPerInvoke = FilterBlockedPopCount.Block)]
    public int FilterBlocked8()
    {
        FilterBlockedPopCount.Compute(a, block, counts);
        return counts[0];
    }

    /// <summary>The pair kernel with this machine's byte counter (VBMI where supported).</summary>
    [Benchmark(OperationsPerInvoke = 2 * FilterBlockedPopCount.Block)]
    public int FilterBlockedPair16()
    {
        FilterBlockedPopCount.DotProducts(a, b, block, Words * 64, counts, second);
        return counts[0] + second[0];
    }

    /// <summary>The pair kernel with the AVX-512BW nibble lookup, for comparison.</summary>
    [Benchmark(OperationsPerInvoke = 2 * FilterBlockedPopCount.Block)]
    public int FilterBlockedPair16Nibble()
    {
        FilterBlockedPopCount.DotProducts(a, b, block, FilterBlockedPopCount.Block, Words * 64, counts, second, ByteCounter.Nibble);
        return counts[0] + second[0];
    }

    /// <summary>The pair kernel on AVX2 alone (256-bit registers, each block in two passes), for hosts without AVX-512.</summary>
    [Benchmark(OperationsPerInvoke = 2 * FilterBlockedPopCount.Block)]
    public int FilterBlockedPair16Avx2()
    {
        FilterBlockedPopCount.DotProducts(a, b, block, FilterBlockedPopCount.Block, Words * 64, counts, second, ByteCounter.Avx2Nibble);
        return counts[0] + second[0];
    }
}
