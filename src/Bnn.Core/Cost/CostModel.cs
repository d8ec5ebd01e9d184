using Bnn.Model;

namespace Bnn.Cost;

/// <summary>
/// The one definition of operation counts (docs/cost-model.md). The unit is a <b>tap op</b>: one weight bit applied
/// to one input value at one output position (one XNOR-popcount bit, or one multiply-accumulate in the first layer).
/// </summary>
public static class CostModel
{
    /// <summary>Dense baseline of a conv layer: K·C·kh·kw·Ho·Wo.</summary>
    public static long ConvBaselineTapOps(ConvLayer layer, Shape output)
    {
        ArgumentNullException.ThrowIfNull(layer);
        return (long)layer.OutChannels * layer.InChannels * layer.KernelH * layer.KernelW * output.Height * output.Width;
    }

    /// <summary>Tap ops of a dense or output layer: In·Out.</summary>
    public static long DenseTapOps(int inFeatures, int outFeatures) => (long)inFeatures * outFeatures;

    /// <summary>Tap ops of layer <paramref name="index"/> of <paramref name="model"/> (0 for pooling).</summary>
    public static long LayerTapOps(BnnModel model, int index)
    {
        ArgumentNullException.ThrowIfNull(model);
        return model.Layers[index] switch
        {
            ConvLayer c => ConvBaselineTapOps(c, model.OutputShapes[index]),
            DenseLayer d => DenseTapOps(d.InFeatures, d.OutFeatures),
            OutputLayer o => DenseTapOps(o.InFeatures, o.Classes),
            _ => 0,
        };
    }

    /// <summary>
    /// Additions that sum the C per-channel 2-D results into each conv output: K·(C−1)·Ho·Wo. The same for every
    /// sharing plan, so reported beside the tap ops rather than inside them.
    /// </summary>
    public static long AccumulateAdds(ConvLayer layer, Shape output)
    {
        ArgumentNullException.ThrowIfNull(layer);
        return (long)layer.OutChannels * (layer.InChannels - 1) * output.Height * output.Width;
    }

    /// <summary>Parameter bits of a layer: ±1 weights count one bit each; batch-norm parameters 4x32 bits per channel.</summary>
    public static long ParameterBits(Layer layer) => layer switch
    {
        ConvLayer c => ((long)c.OutChannels * c.TapsPerOutput) + (c.OutChannels * 4L * 32),
        DenseLayer d => ((long)d.InFeatures * d.OutFeatures) + (d.OutFeatures * 4L * 32),
        OutputLayer o => ((long)o.InFeatures * o.Classes) + 32,
        _ => 0,
    };
}

/// <summary>The cost of one conv layer under a plan, in the units of <see cref="CostModel"/>.</summary>
/// <param name="TapOps">Tap ops: Σ over 2-D results of (n if from scratch, else d) · Ho·Wo.</param>
/// <param name="Conv2d">"2-D convolutions": results from scratch count 1, derivations count d/n, reuses 0.</param>
public readonly record struct PlanCost(long TapOps, double Conv2d)
{
    /// <summary>The cost of <paramref name="plan"/> on a layer with output <paramref name="output"/>.</summary>
    public static PlanCost Of(Sharing.LayerPlan plan, Shape output)
    {
        ArgumentNullException.ThrowIfNull(plan);
        long perPosition = 0;
        double conv2d = 0;
        for (int i = 0; i < plan.Nodes.Count; i++)
        {
            int cost = plan.NodeCost(i);
            perPosition += cost;
            conv2d += plan.Nodes[i].IsRoot ? 1.0 : (double)cost / plan.Taps;
        }
        return new PlanCost(perPosition * output.Height * output.Width, conv2d);
    }

    /// <summary>The dense baseline: every filter from scratch.</summary>
    public static PlanCost Baseline(ConvLayer layer, Shape output)
    {
        ArgumentNullException.ThrowIfNull(layer);
        return new PlanCost(CostModel.ConvBaselineTapOps(layer, output), (double)layer.OutChannels * layer.InChannels);
    }
}
