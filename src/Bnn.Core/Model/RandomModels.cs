namespace Bnn.Model;

/// <summary>
/// Seeded random models of any architecture: ±1 weights and batch norms whose thresholds land inside the
/// accumulator range, so activations are mixed rather than constant. For tests, demos and benchmarks.
/// </summary>
public static class RandomModels
{
    /// <summary>Builds a random model from a layer list for images of <paramref name="input"/> shape.</summary>
    public static BnnModel Create(IReadOnlyList<LayerSpec> specs, Shape input, int seed, int binaryPadValue = 1)
    {
        ArgumentNullException.ThrowIfNull(specs);
        var rng = new Random(seed);
        var layers = new List<Layer>();
        var shape = input;
        bool first = true;
        foreach (var spec in specs)
        {
            switch (spec)
            {
                case ConvSpec c:
                {
                    int taps = shape.Channels * c.Kernel * c.Kernel;
                    double spread = first ? Math.Sqrt(taps) * 150 : Math.Sqrt(taps);
                    var layer = new ConvLayer(c.OutChannels, shape.Channels, c.Kernel, c.Kernel, c.Stride, c.Padding,
                        first ? 0 : binaryPadValue, first, Signs(rng, c.OutChannels * taps), Norm(rng, c.OutChannels, spread));
                    layers.Add(layer);
                    shape = new Shape(c.OutChannels, layer.OutputHeight(shape.Height), layer.OutputWidth(shape.Width));
                    first = false;
                    break;
                }
                case PoolSpec p:
                    layers.Add(new MaxPoolLayer(p.Size));
                    shape = new Shape(shape.Channels, shape.Height / p.Size, shape.Width / p.Size);
                    break;
                case DenseSpec d:
                    layers.Add(new DenseLayer(shape.Size, d.OutFeatures, Signs(rng, shape.Size * d.OutFeatures), Norm(rng, d.OutFeatures, Math.Sqrt(shape.Size))));
                    shape = new Shape(d.OutFeatures, 1, 1);
                    break;
                case OutputSpec o:
                    layers.Add(new OutputLayer(shape.Size, o.Classes, Signs(rng, shape.Size * o.Classes), 0.05f));
                    shape = new Shape(o.Classes, 1, 1);
                    break;
                default:
                    throw new ArgumentException($"unsupported layer spec {spec}", nameof(specs));
            }
        }
        return new BnnModel(input, layers, "random model");
    }

    private static sbyte[] Signs(Random rng, int n)
    {
        var w = new sbyte[n];
        for (int i = 0; i < n; i++)
        {
            w[i] = rng.Next(2) == 0 ? (sbyte)1 : (sbyte)-1;
        }
        return w;
    }

    private static BatchNormParameters Norm(Random rng, int n, double spread)
    {
        var gamma = new float[n];
        var beta = new float[n];
        var mean = new float[n];
        var variance = new float[n];
        for (int j = 0; j < n; j++)
        {
            gamma[j] = (float)((rng.NextDouble() + 0.1) * (rng.Next(4) == 0 ? -1 : 1));
            beta[j] = (float)((rng.NextDouble() - 0.5) * 0.5);
            mean[j] = (float)((rng.NextDouble() - 0.5) * spread * 0.5);
            variance[j] = (float)(spread * spread * (0.5 + rng.NextDouble()));
        }
        return new BatchNormParameters(gamma, beta, mean, variance, 1e-5f);
    }
}
