using System.Numerics;
using Bnn.Engine;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Tests.Engine;

public sealed class XorPopCountTests
{
    public static TheoryData<PopCountKernel> Kernels()
    {
        var data = new TheoryData<PopCountKernel>();
        foreach (var k in XorPopCount.Supported)
        {
            data.Add(k);
        }
        data.Add(PopCountKernel.Auto);
        return data;
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_AllLengths0To256_MatchesPlainLoop(PopCountKernel kernel)
    {
        var rng = new Random(42);
        for (int n = 0; n <= 256; n++)
        {
            var a = new ulong[n];
            var b = new ulong[n];
            for (int i = 0; i < n; i++)
            {
                a[i] = (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 63);
                b[i] = (ulong)rng.NextInt64();
            }
            int expected = 0;
            for (int i = 0; i < n; i++)
            {
                expected += BitOperations.PopCount(a[i] ^ b[i]);
            }
            Assert.Equal(expected, XorPopCount.Compute(a, b, kernel));
        }
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_AllOnes_CountsEveryBit(PopCountKernel kernel)
    {
        var a = Enumerable.Repeat(ulong.MaxValue, 37).ToArray();
        var b = new ulong[37];
        Assert.Equal(37 * 64, XorPopCount.Compute(a, b, kernel));
        Assert.Equal(0, XorPopCount.Compute(a, a, kernel));
    }

    [Fact]
    public void Compute_DifferentLengths_Throws() =>
        Assert.Throws<ArgumentException>(() => XorPopCount.Compute(new ulong[3], new ulong[4]));
}

/// <summary>
/// The filter-blocked conv kernel against its scalar reference, for every patch length 0-256, through every byte
/// counter this machine has and through the default path (which is the scalar reference without AVX-512BW).
/// </summary>
public sealed class FilterBlockedPopCountTests
{
    public static TheoryData<ByteCounter?> Counters()
    {
        var data = new TheoryData<ByteCounter?> { (ByteCounter?)null };
        foreach (var counter in FilterBlockedPopCount.SupportedCounters)
        {
            data.Add(counter);
        }
        return data;
    }

    [Fact]
    public void SupportedCounters_IncludeTheDefault_WhereTheVectorPathRuns()
    {
        if (FilterBlockedPopCount.IsAccelerated)
        {
            Assert.Contains(FilterBlockedPopCount.Counter, FilterBlockedPopCount.SupportedCounters);
        }
        else
        {
            Assert.Empty(FilterBlockedPopCount.SupportedCounters);
        }
    }

    [Theory]
    [MemberData(nameof(Counters))]
    public void Compute_AllLengths0To256_MatchesScalarReference(ByteCounter? counter)
    {
        var rng = new Random(3);
        for (int words = 0; words <= 256; words++)
        {
            var patch = Enumerable.Range(0, words).Select(_ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 63)).ToArray();
            var filters = Enumerable.Range(0, words * FilterBlockedPopCount.Block).Select(_ => (ulong)rng.NextInt64()).ToArray();
            var expected = new int[FilterBlockedPopCount.Block];
            var actual = new int[FilterBlockedPopCount.Block];
            FilterBlockedPopCount.Scalar(patch, filters, expected);
            FilterBlockedPopCount.Compute(patch, filters, actual, counter ?? FilterBlockedPopCount.Counter);
            Assert.Equal(expected, actual);
        }
    }

    [Theory]
    [MemberData(nameof(Counters))]
    public void DotProducts_AllLengths0To256AndPartialBlocks_AreNMinusTwiceTheCount(ByteCounter? counter)
    {
        var rng = new Random(4);
        for (int words = 0; words <= 256; words++)
        {
            var patch = Enumerable.Range(0, words).Select(_ => (ulong)rng.NextInt64()).ToArray();
            var filters = Enumerable.Range(0, words * FilterBlockedPopCount.Block).Select(_ => (ulong)rng.NextInt64()).ToArray();
            var counts = new int[FilterBlockedPopCount.Block];
            FilterBlockedPopCount.Scalar(patch, filters, counts);
            int n = (words * 64) + 3;
            int length = 1 + (words % FilterBlockedPopCount.Block);
            var dot = Enumerable.Repeat(int.MinValue, FilterBlockedPopCount.Block).ToArray();
            if (counter is { } c)
            {
                FilterBlockedPopCount.DotProducts(patch, filters, n, dot.AsSpan(0, length), c);
            }
            else
            {
                FilterBlockedPopCount.DotProducts(patch, filters, n, dot.AsSpan(0, length));
            }
            Assert.Equal(counts.Take(length).Select(c => n - (2 * c)), dot.Take(length));
            Assert.All(dot.Skip(length), v => Assert.Equal(int.MinValue, v)); // never writes past the span
        }
    }

    [Theory]
    [MemberData(nameof(Counters))]
    public void DotProductsPair_AllLengths0To256AndPartialBlocks_EqualTheReference(ByteCounter? counter)
    {
        var rng = new Random(5);
        for (int words = 0; words <= 256; words++)
        {
            var patchA = Enumerable.Range(0, words).Select(_ => (ulong)rng.NextInt64()).ToArray();
            var patchB = Enumerable.Range(0, words).Select(_ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 63)).ToArray();
            var filters = Enumerable.Range(0, words * FilterBlockedPopCount.Block).Select(_ => (ulong)rng.NextInt64()).ToArray();
            int n = (words * 64) + 1;
            int length = 1 + (words % FilterBlockedPopCount.Block);
            var expectedA = new int[FilterBlockedPopCount.Block];
            var expectedB = new int[FilterBlockedPopCount.Block];
            FilterBlockedPopCount.Scalar(patchA, filters, expectedA);
            FilterBlockedPopCount.Scalar(patchB, filters, expectedB);
            var dotA = Enumerable.Repeat(int.MinValue, FilterBlockedPopCount.Block).ToArray();
            var dotB = Enumerable.Repeat(int.MinValue, FilterBlockedPopCount.Block).ToArray();
            if (counter is { } c)
            {
                FilterBlockedPopCount.DotProducts(patchA, patchB, filters, length, n, dotA.AsSpan(0, length), dotB.AsSpan(0, length), c);
            }
            else
            {
                FilterBlockedPopCount.DotProducts(patchA, patchB, filters, n, dotA.AsSpan(0, length), dotB.AsSpan(0, length));
            }
            Assert.Equal(expectedA.Take(length).Select(c => n - (2 * c)), dotA.Take(length));
            Assert.Equal(expectedB.Take(length).Select(c => n - (2 * c)), dotB.Take(length));
            Assert.All(dotA.Skip(length).Concat(dotB.Skip(length)), v => Assert.Equal(int.MinValue, v));

            // The four-patch kernel on the same rows (A, B, B, A), every length too.
            var quad = Enumerable.Repeat(int.MinValue, (4 * length) + 1).ToArray();
            ulong[] four = [.. patchA, .. patchB, .. patchB, .. patchA];
            if (counter is { } c4)
            {
                FilterBlockedPopCount.DotProducts4(four, filters, length, n, quad, c4);
            }
            else
            {
                FilterBlockedPopCount.DotProducts4(four, filters, length, n, quad);
            }
            Assert.Equal(dotA.Take(length).Concat(dotB.Take(length)).Concat(dotB.Take(length)).Concat(dotA.Take(length)).Append(int.MinValue), quad);
        }
    }

    [Theory]
    [MemberData(nameof(Counters))]
    public void Compute_AllBitsDiffer_CountsEveryBitPastTheByteCounterFlush(ByteCounter? counter)
    {
        // All-ones against zeros is the byte counters' worst case (every triple adds 24 to a byte), up to 100 words:
        // 33 triples and a tail word, well past the 9-triple flush, and every tail length at every flush phase.
        var which = counter ?? FilterBlockedPopCount.Counter;
        for (int words = 0; words <= 100; words++)
        {
            var patch = Enumerable.Repeat(ulong.MaxValue, words).ToArray();
            var filters = new ulong[words * FilterBlockedPopCount.Block];
            var counts = new int[FilterBlockedPopCount.Block];
            FilterBlockedPopCount.Compute(patch, filters, counts, which);
            Assert.All(counts, c => Assert.Equal(64 * words, c));
            var dotA = new int[FilterBlockedPopCount.Block];
            var dotB = new int[FilterBlockedPopCount.Block];
            FilterBlockedPopCount.DotProducts(patch, patch, filters, FilterBlockedPopCount.Block, 64 * words, dotA, dotB, which);
            Assert.All(dotA.Concat(dotB), d => Assert.Equal(-64 * words, d));
            var quad = new int[4 * FilterBlockedPopCount.Block];
            FilterBlockedPopCount.DotProducts4([.. patch, .. patch, .. patch, .. patch], filters, FilterBlockedPopCount.Block, 64 * words, quad, which);
            Assert.All(quad, d => Assert.Equal(-64 * words, d));
        }
    }

    [Theory]
    [MemberData(nameof(Counters))]
    public void BankDotProducts_EveryFilterCountAndLength_MatchTheReference(ByteCounter? counter)
    {
        var rng = new Random(6);
        foreach (int words in new[] { 0, 1, 2, 3, 4, 5, 9, 12, 13, 36, 72, 100 })
        {
            foreach (int filters in new[] { 1, 7, 8, 9, 16, 17, 64 })
            {
                var weights = Enumerable.Range(0, filters * words).Select(_ => (ulong)rng.NextInt64()).ToArray();
                var bank = FilterBlockedPopCount.Interleave(weights, filters, words);
                var patchA = Enumerable.Range(0, words).Select(_ => (ulong)rng.NextInt64()).ToArray();
                var patchB = Enumerable.Range(0, words).Select(_ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 63)).ToArray();
                int n = words * 64;
                var expectedA = Enumerable.Range(0, filters).Select(k => n - (2 * XorPopCount.Scalar(patchA, weights.AsSpan(k * words, words)))).ToArray();
                var expectedB = Enumerable.Range(0, filters).Select(k => n - (2 * XorPopCount.Scalar(patchB, weights.AsSpan(k * words, words)))).ToArray();
                var dotA = new int[filters + 1];
                var dotB = new int[filters + 1];
                var single = new int[filters + 1];
                var quad = new int[(4 * filters) + 1];
                ulong[] four = [.. patchB, .. patchA, .. patchA, .. patchB];
                if (counter is { } c)
                {
                    FilterBlockedPopCount.DotProducts(patchA, patchB, bank, filters, n, dotA, dotB, c);
                    FilterBlockedPopCount.DotProducts(patchB, bank, filters, n, single, c);
                    FilterBlockedPopCount.DotProducts4(four, bank, filters, n, quad, c);
                }
                else
                {
                    FilterBlockedPopCount.DotProducts(patchA, patchB, bank, filters, n, dotA, dotB);
                    FilterBlockedPopCount.DotProducts(patchB, bank, filters, n, single);
                    FilterBlockedPopCount.DotProducts4(four, bank, filters, n, quad);
                }
                Assert.Equal([.. expectedA, 0], dotA);
                Assert.Equal([.. expectedB, 0], dotB);
                Assert.Equal([.. expectedB, 0], single);
                Assert.Equal([.. expectedB, .. expectedA, .. expectedA, .. expectedB, 0], quad);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Counters))]
    public void Threshold4_EveryFilterCountAndLength_MatchesThresholdedDotProducts(ByteCounter? counter)
    {
        var rng = new Random(7);
        foreach (int words in new[] { 0, 1, 3, 9, 13, 36 })
        {
            foreach (int filters in new[] { 1, 8, 9, 63, 64, 65, 130 })
            {
                var weights = Enumerable.Range(0, filters * words).Select(_ => (ulong)rng.NextInt64()).ToArray();
                var bank = FilterBlockedPopCount.Interleave(weights, filters, words);
                var patches = Enumerable.Range(0, 4 * words).Select(_ => (ulong)rng.NextInt64()).ToArray();
                int n = words * 64;
                // Bounds near the dot products' spread, flips at random, and a constant channel or two.
                var bounds = Enumerable.Range(0, filters).Select(_ => rng.Next(-n / 8, (n / 8) + 2)).ToArray();
                bounds[0] = int.MinValue;
                var flip = Enumerable.Range(0, filters).Select(_ => rng.Next(2) == 1).ToArray();
                var threshold = Threshold.FromBounds(bounds, flip);
                int outWords = BitConvention.Words(filters);
                var output = Enumerable.Repeat(ulong.MaxValue, (4 * outWords) + 1).ToArray();
                var paired = FilterBlockedPopCount.PairBounds(bounds);
                if (counter is { } c)
                {
                    FilterBlockedPopCount.Threshold4(patches, bank, filters, n, paired, threshold.FlipWords, output, c);
                }
                else
                {
                    FilterBlockedPopCount.Threshold4(patches, bank, filters, n, paired, threshold.FlipWords, output);
                }
                for (int i = 0; i < 4; i++)
                {
                    for (int k = 0; k < 64 * outWords; k++)
                    {
                        ulong bit = (output[(i * outWords) + (k / 64)] >> (k % 64)) & 1;
                        ulong expected = k >= filters ? 0
                            : BitConvention.Bit(threshold.IsPositive(k, n - (2 * XorPopCount.Scalar(patches.AsSpan(i * words, words), weights.AsSpan(k * words, words)))) ? 1 : -1);
                        Assert.Equal(expected, bit);
                    }
                }
                Assert.Equal(ulong.MaxValue, output[^1]); // never writes past four positions
            }
        }
    }

    [Theory]
    [MemberData(nameof(Counters))]
    public void Threshold4InPlace_RowsOfTheSource_EqualThresholdingGatheredPatches(ByteCounter? counter)
    {
        var rng = new Random(8);
        foreach (var (rows, rowWords, stride) in new[] { (3, 3, 30), (3, 6, 12), (1, 7, 7), (2, 4, 9), (3, 12, 40) })
        {
            foreach (int filters in new[] { 8, 64, 100 })
            {
                int words = rows * rowWords;
                var source = Enumerable.Range(0, (rows * stride) + 20).Select(_ => (ulong)rng.NextInt64()).ToArray();
                int[] starts = [0, 1, 5, source.Length - (((rows - 1) * stride) + rowWords)];
                var bank = FilterBlockedPopCount.Interleave(Enumerable.Range(0, filters * words).Select(_ => (ulong)rng.NextInt64()).ToArray(), filters, words);
                var bounds = FilterBlockedPopCount.PairBounds(Enumerable.Range(0, filters).Select(_ => rng.Next(-words * 8, (words * 8) + 1)).ToArray());
                var flips = Enumerable.Range(0, BitConvention.Words(filters)).Select(_ => (ulong)rng.NextInt64()).ToArray();
                var gathered = starts.SelectMany(s => Enumerable.Range(0, rows).SelectMany(r => source.Skip(s + (r * stride)).Take(rowWords))).ToArray();
                var expected = new ulong[4 * BitConvention.Words(filters)];
                var actual = new ulong[expected.Length];
                FilterBlockedPopCount.Threshold4(gathered, bank, filters, words * 64, bounds, flips, expected, null);
                if (counter is { } c)
                {
                    FilterBlockedPopCount.Threshold4(source, starts, rows, rowWords, stride, bank, filters, words * 64, bounds, flips, actual, c);
                }
                else
                {
                    FilterBlockedPopCount.Threshold4(source, starts, rows, rowWords, stride, bank, filters, words * 64, bounds, flips, actual);
                }
                Assert.Equal(expected, actual);
            }
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => FilterBlockedPopCount.Threshold4(new ulong[10], [0, 0, 0, 2], 3, 3, 4, new ulong[72], 8, 576,
            new int[16], new ulong[1], new ulong[4]));
    }

    [Fact]
    public void CounterFor_NamesTheFilterBlockedKernelsCounters_AndOnlyTheirs()
    {
        Assert.Equal(ByteCounter.Avx2Nibble, FilterBlockedPopCount.CounterFor(PopCountKernel.Avx2FilterBlocked));
        Assert.Contains(FilterBlockedPopCount.CounterFor(PopCountKernel.Avx512FilterBlocked), new ByteCounter?[] { ByteCounter.Nibble, ByteCounter.Vbmi });
        Assert.All(Enum.GetValues<PopCountKernel>().Where(k => k is not (PopCountKernel.Avx2FilterBlocked or PopCountKernel.Avx512FilterBlocked)),
            k => Assert.Null(FilterBlockedPopCount.CounterFor(k)));
        // Every filter-blocked kernel this machine lists runs on a counter it lists.
        Assert.All(XorPopCount.Supported.Select(FilterBlockedPopCount.CounterFor).OfType<ByteCounter>(), c => Assert.Contains(c, FilterBlockedPopCount.SupportedCounters));
    }

    [Fact]
    public void Interleave_PutsFilterWordsSideBySide_AndZeroFillsTheLastBlock()
    {
        var filters = Enumerable.Range(0, 10 * 3).Select(i => (ulong)(i + 1)).ToArray(); // 10 filters of 3 words
        var blocked = FilterBlockedPopCount.Interleave(filters, 10, 3);
        Assert.Equal(2 * 3 * 8, blocked.Length);
        Assert.Equal(filters[(9 * 3) + 2], blocked[(((1 * 3) + 2) * 8) + 1]);
        Assert.Equal(0UL, blocked[(((1 * 3) + 2) * 8) + 7]);
    }
}
