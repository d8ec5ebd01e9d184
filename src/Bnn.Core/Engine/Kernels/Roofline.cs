using System.Diagnostics;

namespace Bnn.Engine.Kernels;

/// <summary>
/// The machine's peak XNOR-popcount rate on one thread: each kernel run over operands that stay in L1 (so memory is
/// not the limit), counting one binary op per bit. The best kernel's rate is the roofline that <c>bnn bench</c>
/// divides each layer's achieved rate by.
/// </summary>
public static class Roofline
{
    /// <summary>Measured peak per kernel, in binary ops (bits) per second on one thread.</summary>
    public sealed record Result(IReadOnlyDictionary<string, double> BitOpsPerSecond)
    {
        /// <summary>The best kernel's rate.</summary>
        public double Peak => BitOpsPerSecond.Values.Max();

        /// <summary>The best kernel's name.</summary>
        public string Best => BitOpsPerSecond.MaxBy(p => p.Value).Key;
    }

    /// <summary>Measures every kernel for about <paramref name="secondsPerKernel"/> seconds each.</summary>
    public static Result Measure(double secondsPerKernel = 0.25)
    {
        const int words = 72; // a 3x3 patch of 512 channels: the longest row CNV or BinaryNet-VGG produce
        var rng = new Random(1);
        var a = Enumerable.Range(0, words).Select(_ => (ulong)rng.NextInt64()).ToArray();
        var filters = Enumerable.Range(0, words * FilterBlockedPopCount.Block).Select(_ => (ulong)rng.NextInt64()).ToArray();
        var rates = new Dictionary<string, double>();
        foreach (var kernel in XorPopCount.Supported.Where(k => FilterBlockedPopCount.CounterFor(k) is null))
        {
            var b = filters.AsSpan(0, words).ToArray();
            rates[kernel.ToString()] = Rate(secondsPerKernel, words * 64, () => XorPopCount.Compute(a, b, kernel));
        }
        var counts = new int[FilterBlockedPopCount.Block];
        foreach (var kernel in XorPopCount.Supported)
        {
            if (FilterBlockedPopCount.CounterFor(kernel) is { } best)
            {
                rates[kernel.ToString()] = Rate(secondsPerKernel, words * 64 * FilterBlockedPopCount.Block, () =>
                {
                    FilterBlockedPopCount.Compute(a, filters, counts, best);
                    return counts[0];
                });
            }
        }
        // Two patches per filter load through each byte counter, as the conv runs its last positions.
        var second = a.Reverse().ToArray();
        var dotB = new int[FilterBlockedPopCount.Block];
        // And four patches per filter load, as the conv runs all but its last positions.
        ulong[] four = [.. a, .. second, .. second, .. a];
        var dots4 = new int[4 * FilterBlockedPopCount.Block];
        foreach (var counter in FilterBlockedPopCount.SupportedCounters)
        {
            // Avx512FilterBlockedPairNibble, ..., Avx2FilterBlockedPair: the AVX2 kernel has one counter.
            var (kernel, suffix) = counter == ByteCounter.Avx2Nibble ? (PopCountKernel.Avx2FilterBlocked, "") : (PopCountKernel.Avx512FilterBlocked, counter.ToString());
            rates[$"{kernel}Pair{suffix}"] = Rate(secondsPerKernel, 2L * words * 64 * FilterBlockedPopCount.Block, () =>
            {
                FilterBlockedPopCount.DotProducts(a, second, filters, FilterBlockedPopCount.Block, words * 64, counts, dotB, counter);
                return counts[0] + dotB[0];
            });
            rates[$"{kernel}Quad{suffix}"] = Rate(secondsPerKernel, 4L * words * 64 * FilterBlockedPopCount.Block, () =>
            {
                FilterBlockedPopCount.DotProducts4(four, filters, FilterBlockedPopCount.Block, words * 64, dots4, counter);
                return dots4[0] + dots4[^1];
            });
        }
        return new Result(rates);
    }

    private static double Rate(double seconds, long bitsPerCall, Func<int> call)
    {
        // Warm up for as long as the measurement: a fixed count of calls can end before tiered compilation has
        // installed the optimized code, and then the rate measures tier-0 code for part of the time.
        int sink = 0;
        var warm = Stopwatch.StartNew();
        while (warm.Elapsed.TotalSeconds < seconds)
        {
            for (int i = 0; i < 1000; i++)
            {
                sink += call();
            }
        }
        long calls = 0;
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed.TotalSeconds < seconds)
        {
            for (int i = 0; i < 1000; i++)
            {
                sink += call();
            }
            calls += 1000;
        }
        GC.KeepAlive(sink);
        return calls * bitsPerCall / clock.Elapsed.TotalSeconds;
    }
}
