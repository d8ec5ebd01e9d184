using Bnn.Data;
using Bnn.Sharing;

namespace Bnn.Model;

/// <summary>The (channels, height, width) of an activation; a flat vector has height = width = 1.</summary>
public readonly record struct Shape(int Channels, int Height, int Width)
{
    /// <summary>Number of values.</summary>
    public int Size => Channels * Height * Width;

    /// <inheritdoc/>
    public override string ToString() => $"{Channels}x{Height}x{Width}";
}

/// <summary>
/// A binarized CNN: an input conv on pixel codes, binary convs, max-pools, binary dense layers and an output layer,
/// each conv and hidden dense followed by a folded batch-norm threshold. Construction validates that shapes chain
/// and that every parameter is finite, so an instance is always runnable.
/// </summary>
public sealed class BnnModel
{
    /// <summary>Builds and validates a model; throws <see cref="BnnDataException"/> naming <paramref name="source"/>.</summary>
    public BnnModel(Shape input, IReadOnlyList<Layer> layers, string source = "model", IReadOnlyDictionary<int, LayerPlan>? plans = null)
    {
        ArgumentNullException.ThrowIfNull(layers);
        Input = input;
        Layers = layers;
        Source = source;
        InputShapes = new Shape[layers.Count];
        OutputShapes = new Shape[layers.Count];
        Plans = plans ?? new Dictionary<int, LayerPlan>();
        Validate();
        foreach (var (index, plan) in Plans)
        {
            if (index < 0 || index >= layers.Count || layers[index] is not ConvLayer conv)
            {
                Fail($"sharing plan attached to layer {index}, which is not a conv layer");
                return;
            }
            plan.Validate(conv, $"{source}: layer {index}");
        }
    }

    /// <summary>Sharing plans carried by the model, by conv layer index (empty for a plain model).</summary>
    public IReadOnlyDictionary<int, LayerPlan> Plans { get; }

    /// <summary>The same model carrying <paramref name="plans"/> (validated against the weights).</summary>
    public BnnModel WithPlans(IReadOnlyDictionary<int, LayerPlan> plans) => new(Input, Layers, Source, plans);

    /// <summary>The same architecture with some layers replaced (e.g. merged weights or recalibrated thresholds).</summary>
    public BnnModel WithLayers(IReadOnlyList<Layer> layers) => new(Input, layers, Source);

    /// <summary>Input image shape.</summary>
    public Shape Input { get; }

    /// <summary>Layers in execution order.</summary>
    public IReadOnlyList<Layer> Layers { get; }

    /// <summary>Where the model came from, for messages.</summary>
    public string Source { get; }

    /// <summary>The input shape of each layer.</summary>
    public Shape[] InputShapes { get; }

    /// <summary>The output shape of each layer.</summary>
    public Shape[] OutputShapes { get; }

    /// <summary>Number of classes.</summary>
    public int Classes => ((OutputLayer)Layers[^1]).Classes;

    /// <summary>The conv layers with their indices.</summary>
    public IEnumerable<(int Index, ConvLayer Layer)> ConvLayers =>
        Layers.Select((l, i) => (i, l)).Where(p => p.l is ConvLayer).Select(p => (p.i, (ConvLayer)p.l));

    private void Validate()
    {
        if (Input.Channels <= 0 || Input.Height <= 0 || Input.Width <= 0)
        {
            Fail($"input shape {Input} is not positive");
        }
        if (Layers.Count < 2)
        {
            Fail("needs at least an input conv layer and an output layer");
        }
        var shape = Input;
        bool flat = false;
        for (int i = 0; i < Layers.Count; i++)
        {
            var layer = Layers[i];
            InputShapes[i] = shape;
            string at = $"layer {i} ({layer.Kind})";
            switch (layer)
            {
                case ConvLayer c:
                    if (c.IsInputLayer != (i == 0))
                    {
                        Fail($"{at}: only the first layer reads pixels, and it must be a conv");
                    }
                    if (flat)
                    {
                        Fail($"{at}: a conv cannot follow a dense layer");
                    }
                    if (c.InChannels != shape.Channels)
                    {
                        Fail($"{at}: expects {c.InChannels} input channels but receives {shape}");
                    }
                    if (c.OutChannels <= 0 || c.KernelH <= 0 || c.KernelW <= 0 || c.Stride <= 0 || c.Padding < 0)
                    {
                        Fail($"{at}: non-positive size or stride, or negative padding");
                    }
                    if (c.IsInputLayer ? c.PadValue != 0 : c.PadValue is not (1 or -1 or 0))
                    {
                        Fail($"{at}: pad value {c.PadValue} invalid (0 for the input layer, ±1 or 0 otherwise)");
                    }
                    CheckPixelLevels(at, c);
                    CheckWeights(at, c.Weights, (long)c.OutChannels * c.TapsPerOutput);
                    CheckNorm(at, c.Norm, c.OutChannels);
                    int ho = c.OutputHeight(shape.Height), wo = c.OutputWidth(shape.Width);
                    if (shape.Height + (2 * c.Padding) < c.KernelH || shape.Width + (2 * c.Padding) < c.KernelW || ho <= 0 || wo <= 0)
                    {
                        Fail($"{at}: kernel {c.KernelH}x{c.KernelW} does not fit input {shape} with padding {c.Padding}");
                    }
                    shape = new Shape(c.OutChannels, ho, wo);
                    break;
                case MaxPoolLayer p:
                    if (i == 0 || flat || p.Size <= 0 || shape.Height < p.Size || shape.Width < p.Size)
                    {
                        Fail($"{at}: pool size {p.Size} does not fit input {shape}");
                    }
                    shape = new Shape(shape.Channels, shape.Height / p.Size, shape.Width / p.Size);
                    break;
                case DenseLayer d:
                    if (i == 0 || d.InFeatures != shape.Size || d.OutFeatures <= 0)
                    {
                        Fail($"{at}: expects {d.InFeatures} inputs but receives {shape} = {shape.Size}");
                    }
                    CheckWeights(at, d.Weights, (long)d.InFeatures * d.OutFeatures);
                    CheckNorm(at, d.Norm, d.OutFeatures);
                    shape = new Shape(d.OutFeatures, 1, 1);
                    flat = true;
                    break;
                case OutputLayer o:
                    if (i != Layers.Count - 1)
                    {
                        Fail($"{at}: the output layer must be last");
                    }
                    if (o.InFeatures != shape.Size || o.Classes <= 0)
                    {
                        Fail($"{at}: expects {o.InFeatures} inputs but receives {shape} = {shape.Size}");
                    }
                    CheckWeights(at, o.Weights, (long)o.InFeatures * o.Classes);
                    if (!float.IsFinite(o.Scale) || o.Scale <= 0)
                    {
                        Fail($"{at}: scale {o.Scale} must be finite and positive");
                    }
                    shape = new Shape(o.Classes, 1, 1);
                    break;
                default:
                    Fail($"{at}: unsupported layer type");
                    break;
            }
            OutputShapes[i] = shape;
        }
        if (Layers[^1] is not OutputLayer)
        {
            Fail("the last layer must be an output layer");
        }
    }

    private void CheckWeights(string at, sbyte[] weights, long expected)
    {
        if (weights.LongLength != expected)
        {
            Fail($"{at}: has {weights.LongLength} weights, expected {expected}");
        }
        for (int i = 0; i < weights.Length; i++)
        {
            if (weights[i] is not (1 or -1))
            {
                Fail($"{at}: weight {i} is {weights[i]}, not ±1");
            }
        }
    }

    // Levels bound the input layer's accumulator: |Σ w·level| ≤ max|level|·C·kh·kw must stay inside int32.
    private void CheckPixelLevels(string at, ConvLayer c)
    {
        if (c.PixelLevels is not { } levels)
        {
            return;
        }
        if (!c.IsInputLayer)
        {
            Fail($"{at}: only the input layer has pixel levels");
        }
        if (levels.Length != c.InChannels * 256)
        {
            Fail($"{at}: pixel levels hold {levels.Length} values, expected {c.InChannels}x256");
        }
        if (c.MaxInputMagnitude * c.TapsPerOutput >= 1L << 30)
        {
            Fail($"{at}: pixel levels up to {c.MaxInputMagnitude} could overflow the accumulator over {c.TapsPerOutput} taps");
        }
    }

    private void CheckNorm(string at, BatchNormParameters bn, int channels)
    {
        if (bn.Gamma.Length != channels || bn.Beta.Length != channels || bn.Mean.Length != channels || bn.Variance.Length != channels)
        {
            Fail($"{at}: batch norm has the wrong number of channels (expected {channels})");
        }
        if (!float.IsFinite(bn.Epsilon) || bn.Epsilon < 0)
        {
            Fail($"{at}: batch norm epsilon {bn.Epsilon} must be finite and ≥ 0");
        }
        foreach (var (name, values) in new[] { ("gamma", bn.Gamma), ("beta", bn.Beta), ("mean", bn.Mean), ("variance", bn.Variance) })
        {
            for (int j = 0; j < values.Length; j++)
            {
                if (!float.IsFinite(values[j]))
                {
                    Fail($"{at}: batch norm {name}[{j}] is {values[j]} (NaN or infinite)");
                }
            }
        }
        for (int j = 0; j < channels; j++)
        {
            if ((double)bn.Variance[j] + bn.Epsilon <= 0)
            {
                Fail($"{at}: batch norm variance[{j}] + epsilon must be positive");
            }
        }
    }

    private void Fail(string message) => throw new BnnDataException($"{Source}: {message}");
}
