namespace Bnn.Model;

/// <summary>
/// Batch norm followed by sign, folded into integer comparisons. For an integer accumulator a, channel j outputs +1
/// exactly when γ(a − μ)/√(σ² + ε) + β ≥ 0 (sign(0) = +1), evaluated in exact real arithmetic on the stored float32
/// parameters. With t = μ − β√(σ² + ε)/γ:
/// <list type="bullet">
/// <item>γ &gt; 0: +1 ⇔ a ≥ t ⇔ a ≥ ⌈t⌉, so <c>Bound = ⌈t⌉</c>, <c>Flip = false</c>;</item>
/// <item>γ &lt; 0: +1 ⇔ a ≤ t ⇔ ¬(a ≥ ⌊t⌋ + 1), so <c>Bound = ⌊t⌋ + 1</c>, <c>Flip = true</c>;</item>
/// <item>γ = 0: constant, +1 ⇔ β ≥ 0: <c>Bound = int.MinValue</c>, <c>Flip = β &lt; 0</c>.</item>
/// </list>
/// So every channel reads: output is +1 ⇔ (a ≥ Bound) ≠ Flip. t is computed in double; float32 inputs make it exact
/// to far better than the distance to the nearest integer except in contrived cases.
/// </summary>
public sealed class Threshold
{
    private Threshold(int[] bound, bool[] flip)
    {
        Bound = bound;
        Flip = flip;
        FlipWords = new ulong[(flip.Length + 63) / 64];
        for (int j = 0; j < flip.Length; j++)
        {
            FlipWords[j >> 6] |= flip[j] ? 1UL << (j & 63) : 0;
        }
    }

    /// <summary><see cref="Flip"/> packed 64 channels to a word, for the engines' vector binarization.</summary>
    internal ulong[] FlipWords { get; }

    /// <summary>Per-channel integer bound.</summary>
    public int[] Bound { get; }

    /// <summary>Per-channel comparison flip (negative γ or a constant −1 channel).</summary>
    public bool[] Flip { get; }

    /// <summary>Number of channels.</summary>
    public int Count => Bound.Length;

    /// <summary>Whether accumulator <paramref name="acc"/> on channel <paramref name="j"/> gives +1.</summary>
    public bool IsPositive(int j, int acc) => (acc >= Bound[j]) != Flip[j];

    /// <summary>Builds thresholds directly (tests and the approximate planner's recalibration).</summary>
    public static Threshold FromBounds(int[] bound, bool[] flip) => new(bound, flip);

    /// <summary>Folds batch norm + sign into integer thresholds.</summary>
    public static Threshold Fold(BatchNormParameters bn)
    {
        ArgumentNullException.ThrowIfNull(bn);
        int n = bn.Count;
        var bound = new int[n];
        var flip = new bool[n];
        for (int j = 0; j < n; j++)
        {
            double gamma = bn.Gamma[j];
            double beta = bn.Beta[j];
            if (gamma == 0)
            {
                bound[j] = int.MinValue;
                flip[j] = beta < 0;
                continue;
            }
            double t = bn.Mean[j] - (beta * Math.Sqrt((double)bn.Variance[j] + bn.Epsilon) / gamma);
            if (gamma > 0)
            {
                bound[j] = Clamp(Math.Ceiling(t));
                flip[j] = false;
            }
            else
            {
                bound[j] = Clamp(Math.Floor(t) + 1);
                flip[j] = true;
            }
        }
        return new Threshold(bound, flip);
    }

    private static int Clamp(double v) => v <= int.MinValue ? int.MinValue : v >= int.MaxValue ? int.MaxValue : (int)v;
}
