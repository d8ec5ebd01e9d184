namespace Bnn.Model;

/// <summary>
/// Batch-norm parameters as trained, followed by sign. The engine never evaluates them in floating point: the model
/// folds them into a <see cref="Threshold"/> when it is built.
/// </summary>
public sealed record BatchNormParameters(float[] Gamma, float[] Beta, float[] Mean, float[] Variance, float Epsilon)
{
    /// <summary>Number of channels.</summary>
    public int Count => Gamma.Length;

    /// <summary>
    /// Batch norm that folds to exactly the given integer thresholds (see <see cref="Threshold"/>): γ = ±1 (−1 where
    /// flipped), β = 0, σ² = 1, ε = 0 and μ = bound − ½, so t = bound − ½ and ⌈t⌉ = ⌊t⌋ + 1 = bound. A bound of
    /// <see cref="int.MinValue"/> is a constant channel: γ = 0, β = −1 where flipped, else +1. Bounds must lie within
    /// ±2^22 so that μ is exact in float32. Used for models imported with thresholds rather than batch norm.
    /// </summary>
    public static BatchNormParameters FromThreshold(IReadOnlyList<int> bound, IReadOnlyList<bool> flip)
    {
        ArgumentNullException.ThrowIfNull(bound);
        ArgumentNullException.ThrowIfNull(flip);
        int n = bound.Count;
        var gamma = new float[n];
        var beta = new float[n];
        var mean = new float[n];
        var variance = new float[n];
        for (int j = 0; j < n; j++)
        {
            variance[j] = 1;
            if (bound[j] == int.MinValue)
            {
                beta[j] = flip[j] ? -1 : 1;
                continue;
            }
            if (Math.Abs((long)bound[j]) > 1 << 22)
            {
                throw new ArgumentOutOfRangeException(nameof(bound), $"bound {bound[j]} is outside ±2^22");
            }
            gamma[j] = flip[j] ? -1 : 1;
            mean[j] = bound[j] - 0.5f;
        }
        return new BatchNormParameters(gamma, beta, mean, variance, 0);
    }
}

/// <summary>One layer of a <see cref="BnnModel"/>.</summary>
public abstract class Layer
{
    /// <summary>Short type name as written in the model file.</summary>
    public abstract string Kind { get; }
}

/// <summary>
/// A convolution followed by batch norm and sign. Weights are ±1, stored as <see cref="sbyte"/> in PyTorch order
/// (K, C, kh, kw). When <see cref="IsInputLayer"/>, the input is an integer level per pixel value
/// (<see cref="PixelLevel"/>; by default the code of <see cref="PixelCode"/>) and padding is level 0; otherwise the input
/// is ±1 and padded with <see cref="PadValue"/>: ±1, as our trainer does, so every tap is a ±1 product, or 0, as ONNX
/// Conv pads imported models (the packed engine then subtracts the padded taps' weights, see <c>BitConvention</c>).
/// </summary>
public sealed class ConvLayer : Layer
{
    /// <summary>Creates a conv layer; validates shapes and values.</summary>
    public ConvLayer(int outChannels, int inChannels, int kernelH, int kernelW, int stride, int padding, int padValue,
        bool isInputLayer, sbyte[] weights, BatchNormParameters norm, int[]? pixelLevels = null)
    {
        OutChannels = outChannels;
        InChannels = inChannels;
        KernelH = kernelH;
        KernelW = kernelW;
        Stride = stride;
        Padding = padding;
        PadValue = padValue;
        IsInputLayer = isInputLayer;
        Weights = weights;
        Norm = norm;
        PixelLevels = pixelLevels;
        Threshold = Threshold.Fold(norm);
        MaxInputMagnitude = !isInputLayer ? 1 : pixelLevels is null ? PixelCode.MaxAbs : pixelLevels.Select(v => Math.Abs((long)v)).DefaultIfEmpty(0).Max();
    }

    /// <summary>
    /// The largest |x| a tap can see: 1 for binary layers, the largest pixel level for the input layer. Times
    /// <see cref="TapsPerOutput"/> it bounds every accumulator, which decides the engines' lane widths.
    /// </summary>
    public long MaxInputMagnitude { get; }

    /// <summary>
    /// For the input layer, the integer level of each pixel value per channel, (C, 256) row-major, or null for the
    /// standard code <see cref="PixelCode.Encode"/>. Imported ONNX models carry their preprocessing here.
    /// </summary>
    public int[]? PixelLevels { get; }

    /// <summary>The integer the input layer sees for pixel value <paramref name="p"/> on channel <paramref name="channel"/>.</summary>
    public int PixelLevel(int channel, byte p) => PixelLevels is null ? PixelCode.Encode(p) : PixelLevels[(channel * 256) + p];

    /// <summary>The same layer with other weights and batch norm (merging, recalibration).</summary>
    public ConvLayer With(sbyte[] weights, BatchNormParameters norm) =>
        new(OutChannels, InChannels, KernelH, KernelW, Stride, Padding, PadValue, IsInputLayer, weights, norm, PixelLevels);

    /// <inheritdoc/>
    public override string Kind => "conv";

    /// <summary>K, the number of filters.</summary>
    public int OutChannels { get; }

    /// <summary>C, the number of input channels.</summary>
    public int InChannels { get; }

    /// <summary>Kernel height.</summary>
    public int KernelH { get; }

    /// <summary>Kernel width.</summary>
    public int KernelW { get; }

    /// <summary>Stride in both directions.</summary>
    public int Stride { get; }

    /// <summary>Padding on every side.</summary>
    public int Padding { get; }

    /// <summary>The value of padded taps: 0 for the input layer, +1 or −1 for binary layers.</summary>
    public int PadValue { get; }

    /// <summary>Whether this layer reads pixel codes rather than ±1 activations.</summary>
    public bool IsInputLayer { get; }

    /// <summary>±1 weights in (K, C, kh, kw) order.</summary>
    public sbyte[] Weights { get; }

    /// <summary>The batch norm that follows, as trained.</summary>
    public BatchNormParameters Norm { get; }

    /// <summary>The folded integer threshold.</summary>
    public Threshold Threshold { get; }

    /// <summary>Taps per output value: C·kh·kw.</summary>
    public int TapsPerOutput => InChannels * KernelH * KernelW;

    /// <summary>Output height for an input of height <paramref name="inputHeight"/>.</summary>
    public int OutputHeight(int inputHeight) => ((inputHeight + (2 * Padding) - KernelH) / Stride) + 1;

    /// <summary>Output width for an input of width <paramref name="inputWidth"/>.</summary>
    public int OutputWidth(int inputWidth) => ((inputWidth + (2 * Padding) - KernelW) / Stride) + 1;

    /// <summary>The weight of filter k, channel c, tap (y, x).</summary>
    public sbyte Weight(int k, int c, int y, int x) => Weights[(((k * InChannels) + c) * KernelH + y) * KernelW + x];
}

/// <summary>Max-pool over non-overlapping Size x Size windows (floor), on ±1 values.</summary>
public sealed class MaxPoolLayer(int size) : Layer
{
    /// <inheritdoc/>
    public override string Kind => "maxpool";

    /// <summary>Window size and stride.</summary>
    public int Size { get; } = size;
}

/// <summary>
/// A binary dense layer followed by batch norm and sign. Its input is the previous activation flattened in
/// (C, H, W) order, as PyTorch flattens. Weights are ±1 in (Out, In) order.
/// </summary>
public sealed class DenseLayer(int inFeatures, int outFeatures, sbyte[] weights, BatchNormParameters norm) : Layer
{
    /// <inheritdoc/>
    public override string Kind => "dense";

    /// <summary>Input features.</summary>
    public int InFeatures { get; } = inFeatures;

    /// <summary>Output features.</summary>
    public int OutFeatures { get; } = outFeatures;

    /// <summary>±1 weights in (Out, In) order.</summary>
    public sbyte[] Weights { get; } = weights;

    /// <summary>The batch norm that follows, as trained.</summary>
    public BatchNormParameters Norm { get; } = norm;

    /// <summary>The folded integer threshold.</summary>
    public Threshold Threshold { get; } = Threshold.Fold(norm);
}

/// <summary>
/// The final binary dense layer. Its integer dot products are the class scores; the prediction is their argmax with
/// ties going to the lowest index. <see cref="Scale"/> is the positive temperature used in training; it multiplies
/// every score alike, so it never changes a prediction, and the engine reports the integer scores.
/// </summary>
public sealed class OutputLayer(int inFeatures, int classes, sbyte[] weights, float scale) : Layer
{
    /// <inheritdoc/>
    public override string Kind => "output";

    /// <summary>Input features.</summary>
    public int InFeatures { get; } = inFeatures;

    /// <summary>Number of classes.</summary>
    public int Classes { get; } = classes;

    /// <summary>±1 weights in (Classes, In) order.</summary>
    public sbyte[] Weights { get; } = weights;

    /// <summary>Positive score temperature (informational).</summary>
    public float Scale { get; } = scale;
}
