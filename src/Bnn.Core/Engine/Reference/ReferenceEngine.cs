using Bnn.Data;
using Bnn.Model;

namespace Bnn.Engine.Reference;

/// <summary>
/// The obviously-correct engine: plain loops over ±1 integers in (C, H, W) order, exactly as the layer definitions
/// read. Every other engine is tested against this one. It allocates freely and is slow on purpose.
/// </summary>
public sealed class ReferenceEngine(BnnModel model) : IEngine
{
    /// <inheritdoc/>
    public string Name => "reference";

    /// <inheritdoc/>
    public BnnModel Model { get; } = model;

    /// <inheritdoc/>
    public void Score(ImageSet images, int start, int count, Span<int> scores, int threads = 1)
    {
        EngineExtensions.CheckInput(Model, images, start, count, scores.Length);
        var result = new int[count * Model.Classes];
        EngineExtensions.ForEachImage(start, count, threads, (i, _) =>
            ScoreImage(images.Image(i)).CopyTo(result.AsSpan((i - start) * Model.Classes)));
        result.CopyTo(scores);
    }

    /// <summary>The integer scores of one image.</summary>
    public int[] ScoreImage(ReadOnlySpan<byte> pixels)
    {
        var x = new int[pixels.Length];
        PixelCode.EncodeImage((ConvLayer)Model.Layers[0], pixels, x);
        for (int l = 0; l < Model.Layers.Count; l++)
        {
            var inShape = Model.InputShapes[l];
            var outShape = Model.OutputShapes[l];
            x = Model.Layers[l] switch
            {
                ConvLayer c => Binarize(Conv(c, x, inShape, outShape), c.Threshold, outShape.Height * outShape.Width),
                MaxPoolLayer p => MaxPool(p, x, inShape, outShape),
                DenseLayer d => Binarize(Dense(d.Weights, d.InFeatures, d.OutFeatures, x), d.Threshold, 1),
                OutputLayer o => Dense(o.Weights, o.InFeatures, o.Classes, x),
                _ => throw new InvalidOperationException("unknown layer"),
            };
        }
        return x;
    }

    /// <summary>The raw accumulators of a conv layer, (K, Ho, Wo). Padded taps hold the layer's pad value.</summary>
    public static int[] Conv(ConvLayer c, int[] x, Shape inShape, Shape outShape)
    {
        var acc = new int[outShape.Size];
        for (int k = 0; k < c.OutChannels; k++)
        {
            for (int oy = 0; oy < outShape.Height; oy++)
            {
                for (int ox = 0; ox < outShape.Width; ox++)
                {
                    int sum = 0;
                    for (int ch = 0; ch < c.InChannels; ch++)
                    {
                        for (int ky = 0; ky < c.KernelH; ky++)
                        {
                            for (int kx = 0; kx < c.KernelW; kx++)
                            {
                                int iy = (oy * c.Stride) + ky - c.Padding;
                                int ix = (ox * c.Stride) + kx - c.Padding;
                                bool inside = iy >= 0 && iy < inShape.Height && ix >= 0 && ix < inShape.Width;
                                int v = inside ? x[(((ch * inShape.Height) + iy) * inShape.Width) + ix] : c.PadValue;
                                sum += c.Weight(k, ch, ky, kx) * v;
                            }
                        }
                    }
                    acc[(((k * outShape.Height) + oy) * outShape.Width) + ox] = sum;
                }
            }
        }
        return acc;
    }

    internal static int[] Dense(sbyte[] weights, int inFeatures, int outFeatures, int[] x)
    {
        var acc = new int[outFeatures];
        for (int o = 0; o < outFeatures; o++)
        {
            int sum = 0;
            for (int i = 0; i < inFeatures; i++)
            {
                sum += weights[(o * inFeatures) + i] * x[i];
            }
            acc[o] = sum;
        }
        return acc;
    }

    internal static int[] Binarize(int[] acc, Threshold threshold, int perChannel)
    {
        var y = new int[acc.Length];
        for (int i = 0; i < acc.Length; i++)
        {
            y[i] = threshold.IsPositive(i / perChannel, acc[i]) ? 1 : -1;
        }
        return y;
    }

    internal static int[] MaxPool(MaxPoolLayer p, int[] x, Shape inShape, Shape outShape)
    {
        var y = new int[outShape.Size];
        for (int ch = 0; ch < outShape.Channels; ch++)
        {
            for (int oy = 0; oy < outShape.Height; oy++)
            {
                for (int ox = 0; ox < outShape.Width; ox++)
                {
                    int m = int.MinValue;
                    for (int dy = 0; dy < p.Size; dy++)
                    {
                        for (int dx = 0; dx < p.Size; dx++)
                        {
                            m = Math.Max(m, x[(((ch * inShape.Height) + (oy * p.Size) + dy) * inShape.Width) + (ox * p.Size) + dx]);
                        }
                    }
                    y[(((ch * outShape.Height) + oy) * outShape.Width) + ox] = m;
                }
            }
        }
        return y;
    }
}
