using Bnn.Data;

namespace Bnn.Onnx;

/// <summary>One per-channel float32 step applied to a layer's accumulator before binarization.</summary>
internal abstract record ChannelOp
{
    /// <summary>The step as ONNX defines it, in float32 (each ONNX elementwise op rounds once).</summary>
    public abstract float Apply(int j, float x);

    /// <summary>The step in exact real arithmetic: x ↦ Slope·x + Offset.</summary>
    public abstract (double Slope, double Offset) Affine(int j);
}

internal sealed record AddOp(double[] C) : ChannelOp
{
    public override float Apply(int j, float x) => x + (float)C[j];

    public override (double, double) Affine(int j) => (1, (float)C[j]);
}

internal sealed record MulOp(double[] C) : ChannelOp
{
    public override float Apply(int j, float x) => x * (float)C[j];

    public override (double, double) Affine(int j) => ((float)C[j], 0);
}

internal sealed record DivOp(double[] C) : ChannelOp
{
    public override float Apply(int j, float x) => x / (float)C[j];

    public override (double, double) Affine(int j) => (1.0 / (float)C[j], 0);
}

internal sealed record NegOp : ChannelOp
{
    public override float Apply(int j, float x) => -x;

    public override (double, double) Affine(int j) => (-1, 0);
}

/// <summary>ONNX BatchNormalization in inference mode: (x − mean) / sqrt(var + ε) · scale + B.</summary>
internal sealed record NormOp(double[] Scale, double[] Bias, double[] Mean, double[] Variance, float Epsilon) : ChannelOp
{
    public override float Apply(int j, float x) =>
        ((x - (float)Mean[j]) / MathF.Sqrt((float)Variance[j] + Epsilon) * (float)Scale[j]) + (float)Bias[j];

    public override (double, double) Affine(int j)
    {
        double s = (float)Scale[j] / Math.Sqrt((double)(float)Variance[j] + Epsilon);
        return (s, (float)Bias[j] - (s * (float)Mean[j]));
    }
}

/// <summary>
/// The per-channel steps between a layer's integer accumulator and its binarization, and their folding into integer
/// thresholds. The accumulator a of our engine enters scaled: the ONNX value is a·<see cref="InputScale"/> (a power of
/// two, so exact). The comparison is "value ≥ c" (inclusive) or "value &gt; c"; ONNX Sign is "&gt; 0" with a tie at 0.
/// </summary>
internal sealed class ChannelChain(int channels, double inputScale, long maxAccumulator)
{
    // Decisions closer than this (relative to the largest intermediate) could go either way under another evaluation
    // order or fused kernel; the import refuses them rather than guess. About 4 float32 ulps.
    private const double Tolerance = 1.0 / (1 << 21);

    public List<ChannelOp> Ops { get; } = [];

    public int Channels { get; } = channels;

    public double InputScale { get; } = inputScale;

    /// <summary>Largest |a| the layer can produce.</summary>
    public long MaxAccumulator { get; } = maxAccumulator;

    /// <summary>Whether a Clip (min &lt; 0 &lt; max) was applied: it keeps the sign, so only a comparison with 0 may follow.</summary>
    public bool Clipped { get; private init; }

    /// <summary>A copy that can take more steps without changing this chain (graph values may branch).</summary>
    public ChannelChain Copy(bool clipped)
    {
        var copy = new ChannelChain(Channels, InputScale, MaxAccumulator) { Clipped = clipped };
        copy.Ops.AddRange(Ops);
        return copy;
    }

    public (double Slope, double Offset) Composite(int j)
    {
        double slope = InputScale, offset = 0;
        foreach (var op in Ops)
        {
            var (s, o) = op.Affine(j);
            slope *= s;
            offset = (offset * s) + o;
        }
        return (slope, offset);
    }

    /// <summary>The ONNX float32 value for accumulator a on channel j, and the largest magnitude seen on the way.</summary>
    public (float Value, double Magnitude) Evaluate(int j, long a)
    {
        float x = (float)(a * InputScale);
        double magnitude = Math.Abs(x);
        foreach (var op in Ops)
        {
            x = op.Apply(j, x);
            magnitude = Math.Max(magnitude, Math.Abs(x));
        }
        return (x, magnitude);
    }

    /// <summary>
    /// Folds "value ≥ c" (or "&gt; c") into +1 ⇔ (a ≥ Bound) ≠ Flip, checking in float32 that the decision at the
    /// integers on both sides of the boundary is clear. <paramref name="signTie"/> makes value = c an error (ONNX
    /// Sign(0) = 0 is not binary).
    /// </summary>
    public (int[] Bound, bool[] Flip) Fold(double[] c, bool inclusive, bool signTie, string node)
    {
        var bound = new int[Channels];
        var flip = new bool[Channels];
        long lo = -MaxAccumulator, hi = MaxAccumulator;
        for (int j = 0; j < Channels; j++)
        {
            var (s, o) = Composite(j);
            if (!double.IsFinite(s) || !double.IsFinite(o))
            {
                throw new BnnDataException($"node '{node}': channel {j} has a non-finite scale or offset before binarization");
            }
            long b;
            bool f;
            if (s == 0)
            {
                b = lo; // every a counts as "≥ Bound"; the channel is constant
                f = !Decide(Evaluate(j, 0).Value, c[j], inclusive);
            }
            else
            {
                double t = (c[j] - o) / s;
                if (s > 0)
                {
                    b = inclusive ? Ceil(t) : Floor(t) + 1;
                    f = false;
                }
                else
                {
                    b = inclusive ? Floor(t) + 1 : Ceil(t);
                    f = true;
                }
                b = Math.Clamp(b, lo, hi + 1);
            }
            for (long a = b - 1; a <= b; a++)
            {
                if (a < lo || a > hi)
                {
                    continue;
                }
                var (y, magnitude) = Evaluate(j, a);
                if (signTie && y == c[j])
                {
                    throw new BnnDataException(
                        $"node '{node}': Sign sees exactly 0 on channel {j} when the accumulator is {a}; ONNX Sign(0) = 0 is not ±1, so the model is not binary there");
                }
                bool expected = (a >= b) != f;
                if (Decide(y, c[j], inclusive) != expected || Math.Abs(y - c[j]) <= Tolerance * Math.Max(magnitude, Math.Abs(c[j])))
                {
                    throw new BnnDataException(
                        $"node '{node}': on channel {j} the binarization of accumulator {a} is within float32 rounding of its threshold, so it cannot be imported exactly");
                }
            }
            bound[j] = (int)b;
            flip[j] = f;
        }
        return (bound, flip);
    }

    private static bool Decide(float y, double c, bool inclusive) => inclusive ? y >= c : y > c;

    private static long Ceil(double t) => (long)Math.Clamp(Math.Ceiling(t), -(double)(1L << 40), 1L << 40);

    private static long Floor(double t) => (long)Math.Clamp(Math.Floor(t), -(double)(1L << 40), 1L << 40);
}
