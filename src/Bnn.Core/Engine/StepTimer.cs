using System.Diagnostics;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// Times one packed step on synthetic input, for the shared engine's per-layer choice. The kernels have no
/// data-dependent branches, so random bits time like real activations. A few runs suffice only because every method a
/// step calls per row or per position group is compiled fully optimized from its first call
/// (<c>AggressiveOptimization</c>) or inlined into one that is: a plain helper runs as tier-0 code until tiered
/// compilation replaces it, later than these runs. One such helper (the plane conv's widening add) once made the
/// shared steps time 3-4x slower than they run.
/// </summary>
internal static class StepTimer
{
    /// <summary>Untimed runs first, here and in <c>PackedEngine.ChooseConvKernels</c>.</summary>
    internal const int WarmUps = 2;

    /// <summary>Timed runs, of which the fastest counts.</summary>
    internal const int Runs = 9;

    /// <summary>The fastest of <see cref="Runs"/> runs after warm-up, in microseconds.</summary>
    public static double Microseconds(PackedStep step, Shape inShape)
    {
        var rng = new Random(1);
        var output = new ulong[step.OutputWords];
        var scratch = new ulong[step.PaddedWords];
        var acc = new int[Math.Max(1, step.AccumulatorCount)];
        var pixels = new byte[inShape.Size];
        rng.NextBytes(pixels);
        int words = BitConvention.Words(inShape.Channels);
        var bits = new ulong[inShape.Height * inShape.Width * words];
        for (int i = 0; i < bits.Length; i++)
        {
            int valid = Math.Min(BitConvention.WordBits, inShape.Channels - ((i % words) * BitConvention.WordBits));
            bits[i] = (ulong)rng.NextInt64() & (valid == BitConvention.WordBits ? ulong.MaxValue : (1UL << valid) - 1);
        }
        long best = long.MaxValue;
        for (int r = 0; r < WarmUps + Runs; r++)
        {
            long start = Stopwatch.GetTimestamp();
            if (step.TakesPixels)
            {
                step.RunPixels(pixels, output, scratch, acc);
            }
            else
            {
                step.Run(bits, output, scratch, acc);
            }
            long elapsed = Stopwatch.GetTimestamp() - start;
            best = r < WarmUps ? best : Math.Min(best, elapsed);
        }
        return best * 1e6 / Stopwatch.Frequency;
    }
}
