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
