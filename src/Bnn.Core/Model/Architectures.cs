namespace Bnn.Model;

/// <summary>One stage of a named architecture, before any weights exist.</summary>
public abstract record LayerSpec;

/// <summary>A 3x3-style convolution stage: conv, batch norm, sign. The first conv sees pixels, later ones ±1.</summary>
public sealed record ConvSpec(int OutChannels, int Kernel, int Stride, int Padding) : LayerSpec;

/// <summary>A max-pool stage over ±1 activations.</summary>
public sealed record PoolSpec(int Size) : LayerSpec;

/// <summary>A hidden binary dense stage: dense, batch norm, sign. The first one flattens its input.</summary>
public sealed record DenseSpec(int OutFeatures) : LayerSpec;

/// <summary>The final binary dense layer producing integer class scores.</summary>
public sealed record OutputSpec(int Classes) : LayerSpec;

/// <summary>The architectures that <c>bnn train</c> knows, as layer lists shared by the trainer and the tests.</summary>
public static class Architectures
{
    /// <summary>The accepted names.</summary>
    public static IReadOnlyList<string> Names { get; } = ["cnv", "binarynet-vgg", "airbench"];

    /// <summary>
    /// The layer list of <paramref name="name"/> with channel counts scaled by <paramref name="width"/>
    /// (1.0 is the published size).
    /// </summary>
    public static IReadOnlyList<LayerSpec> Build(string name, double width = 1.0, int classes = 10)
    {
        if (!(width > 0) || double.IsInfinity(width))
        {
            throw new ArgumentOutOfRangeException(nameof(width), width, "width must be a positive number");
        }
        int W(int c) => Math.Max(1, (int)Math.Round(c * width));
        return name switch
        {
            // FINN CNV (Umuroglu et al. 2017): valid 3x3 convs 64-64, pool, 128-128, pool, 256-256, FC 512-512-10.
            "cnv" =>
            [
                new ConvSpec(W(64), 3, 1, 0), new ConvSpec(W(64), 3, 1, 0), new PoolSpec(2),
                new ConvSpec(W(128), 3, 1, 0), new ConvSpec(W(128), 3, 1, 0), new PoolSpec(2),
                new ConvSpec(W(256), 3, 1, 0), new ConvSpec(W(256), 3, 1, 0),
                new DenseSpec(W(512)), new DenseSpec(W(512)), new OutputSpec(classes),
            ],
            // BinaryNet CIFAR-10 (Courbariaux, Hubara et al. 2016): 2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-1024FC-1024FC-10.
            "binarynet-vgg" =>
            [
                new ConvSpec(W(128), 3, 1, 1), new ConvSpec(W(128), 3, 1, 1), new PoolSpec(2),
                new ConvSpec(W(256), 3, 1, 1), new ConvSpec(W(256), 3, 1, 1), new PoolSpec(2),
                new ConvSpec(W(512), 3, 1, 1), new ConvSpec(W(512), 3, 1, 1), new PoolSpec(2),
                new DenseSpec(W(1024)), new DenseSpec(W(1024)), new OutputSpec(classes),
            ],
            // The plain net of Jordan's airbench (2024), 94 % on CIFAR-10 in 10 epochs with its own recipe: a stem conv, then
            // three blocks of conv, pool, conv at 64, 256, 256 channels, a global max pool and the classifier. Meant
            // as a --float distillation teacher: about 0.15 GMAC an image against BinaryNet-VGG's 0.61, so it trains
            // about 4× faster a step. Its stem is a 3x3 conv to 32 channels in place of airbench's fixed 2x2 whitening.
            "airbench" =>
            [
                new ConvSpec(W(32), 3, 1, 1),
                new ConvSpec(W(64), 3, 1, 1), new PoolSpec(2), new ConvSpec(W(64), 3, 1, 1),
                new ConvSpec(W(256), 3, 1, 1), new PoolSpec(2), new ConvSpec(W(256), 3, 1, 1),
                new ConvSpec(W(256), 3, 1, 1), new PoolSpec(2), new ConvSpec(W(256), 3, 1, 1), new PoolSpec(4),
                new OutputSpec(classes),
            ],
            _ => throw new ArgumentException($"unknown architecture '{name}' (expected one of: {string.Join(", ", Names)})", nameof(name)),
        };
    }
}
