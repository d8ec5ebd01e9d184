using Bnn.Data;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// Batch-norm recalibration after the weights changed (approximate sharing): re-estimates each conv and dense
/// layer's running mean and variance on calibration images, in layer order, so that every layer sees the statistics
/// its already-recalibrated predecessors produce. γ, β and ε are kept; the thresholds are refolded from the new
/// statistics. This is the cheap recovery step: no gradients, one pass per layer.
/// </summary>
public static class Recalibration
{
    /// <summary>Returns a copy of <paramref name="model"/> (without plans) with re-estimated batch-norm statistics.</summary>
    public static BnnModel Recalibrate(BnnModel model, ImageSet images, int threads = 1)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0)
        {
            throw new ArgumentException("no calibration images", nameof(images));
        }
        var layers = model.Layers.ToList();
        // Activations of every calibration image at the current depth (null before the first layer: pixels).
        ulong[][]? bits = null;
        for (int l = 0; l < layers.Count - 1; l++)
        {
            var inShape = model.InputShapes[l];
            var outShape = model.OutputShapes[l];
            var step = PackedEngine.Compile(layers[l], inShape, outShape, PopCountKernel.Auto);
            if (layers[l] is ConvLayer or DenseLayer)
            {
                int channels = outShape.Channels;
                var (sum, sumSquares) = Statistics(step, images, bits, channels, threads);
                long count = (long)images.Count * outShape.Height * outShape.Width;
                var mean = new float[channels];
                var variance = new float[channels];
                for (int k = 0; k < channels; k++)
                {
                    double m = sum[k] / count;
                    mean[k] = (float)m;
                    variance[k] = (float)Math.Max(0, (sumSquares[k] / count) - (m * m));
                }
                layers[l] = layers[l] switch
                {
                    ConvLayer c => c.With(c.Weights, c.Norm with { Mean = mean, Variance = variance }),
                    DenseLayer d => new DenseLayer(d.InFeatures, d.OutFeatures, d.Weights, d.Norm with { Mean = mean, Variance = variance }),
                    _ => throw new InvalidOperationException(),
                };
                step = PackedEngine.Compile(layers[l], inShape, outShape, PopCountKernel.Auto);
            }
            bits = Forward(step, images, bits, threads);
        }
        return model.WithLayers(layers);
    }

    private static (double[] Sum, double[] SumSquares) Statistics(PackedStep step, ImageSet images, ulong[][]? bits, int channels, int threads)
    {
        var sums = new double[channels];
        var squares = new double[channels];
        int workers = Math.Max(1, Math.Min(threads, images.Count));
        var scratch = Enumerable.Range(0, workers).Select(_ => (Acc: new int[step.AccumulatorCount], Padded: new ulong[step.PaddedWords],
            Sum: new double[channels], Sq: new double[channels])).ToArray();
        EngineExtensions.ForEachImage(0, images.Count, workers, (i, w) =>
        {
            var s = scratch[w];
            if (step is InputConvStep input)
            {
                input.Accumulate(images.Image(i), s.Acc);
            }
            else
            {
                step.Accumulate(bits![i], s.Padded, s.Acc);
            }
            for (int j = 0; j < s.Acc.Length; j++)
            {
                double v = s.Acc[j];
                s.Sum[j % channels] += v;
                s.Sq[j % channels] += v * v;
            }
        });
        foreach (var s in scratch)
        {
            for (int k = 0; k < channels; k++)
            {
                sums[k] += s.Sum[k];
                squares[k] += s.Sq[k];
            }
        }
        return (sums, squares);
    }

    private static ulong[][] Forward(PackedStep step, ImageSet images, ulong[][]? bits, int threads)
    {
        var next = new ulong[images.Count][];
        int workers = Math.Max(1, Math.Min(threads, images.Count));
        var scratch = Enumerable.Range(0, workers).Select(_ => (Acc: new int[Math.Max(1, step.AccumulatorCount)], Padded: new ulong[step.PaddedWords])).ToArray();
        EngineExtensions.ForEachImage(0, images.Count, workers, (i, w) =>
        {
            var output = new ulong[step.OutputWords];
            if (step is InputConvStep input)
            {
                input.RunPixels(images.Image(i), output, scratch[w].Padded, scratch[w].Acc);
            }
            else
            {
                step.Run(bits![i], output, scratch[w].Padded, scratch[w].Acc);
            }
            next[i] = output;
        });
        return next;
    }
}
