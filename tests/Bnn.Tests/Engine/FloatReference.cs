using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>
/// The float definition of the network, written independently of the engines: conv in double on pixel codes or ±1
/// values (padding with the declared value), then batch norm as γ(a−μ)/√(σ²+ε)+β, then sign with sign(0) = +1,
/// max-pool as max, dense as a dot product. Larq's layers_test idea: the quantized layer equals the float layer
/// applied to sign(input) and sign(weights).
/// </summary>
internal static class FloatReference
{
    public static double[] Scores(BnnModel model, ReadOnlySpan<byte> pixels)
    {
        var x = new double[pixels.Length];
        var first = (ConvLayer)model.Layers[0];
        int plane = pixels.Length / model.Input.Channels;
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = first.PixelLevels is { } levels ? levels[((i / plane) * 256) + pixels[i]] : (2.0 * pixels[i]) - 255.0;
        }
        for (int l = 0; l < model.Layers.Count; l++)
        {
            var s = model.InputShapes[l];
            var o = model.OutputShapes[l];
            switch (model.Layers[l])
            {
                case ConvLayer c:
                {
                    var y = new double[o.Size];
                    for (int k = 0; k < o.Channels; k++)
                    {
                        for (int oy = 0; oy < o.Height; oy++)
                        {
                            for (int ox = 0; ox < o.Width; ox++)
                            {
                                double sum = 0;
                                for (int ch = 0; ch < s.Channels; ch++)
                                {
                                    for (int ky = 0; ky < c.KernelH; ky++)
                                    {
                                        for (int kx = 0; kx < c.KernelW; kx++)
                                        {
                                            int iy = (oy * c.Stride) + ky - c.Padding, ix = (ox * c.Stride) + kx - c.Padding;
                                            double v = iy < 0 || ix < 0 || iy >= s.Height || ix >= s.Width ? c.PadValue : x[(((ch * s.Height) + iy) * s.Width) + ix];
                                            sum += v * c.Weight(k, ch, ky, kx);
                                        }
                                    }
                                }
                                y[(((k * o.Height) + oy) * o.Width) + ox] = Sign(Norm(c.Norm, k, sum));
                            }
                        }
                    }
                    x = y;
                    break;
                }
                case MaxPoolLayer p:
                {
                    var y = new double[o.Size];
                    for (int ch = 0; ch < o.Channels; ch++)
                    {
                        for (int oy = 0; oy < o.Height; oy++)
                        {
                            for (int ox = 0; ox < o.Width; ox++)
                            {
                                double m = double.NegativeInfinity;
                                for (int dy = 0; dy < p.Size; dy++)
                                {
                                    for (int dx = 0; dx < p.Size; dx++)
                                    {
                                        m = Math.Max(m, x[(((ch * s.Height) + (oy * p.Size) + dy) * s.Width) + (ox * p.Size) + dx]);
                                    }
                                }
                                y[(((ch * o.Height) + oy) * o.Width) + ox] = m;
                            }
                        }
                    }
                    x = y;
                    break;
                }
                case DenseLayer d:
                    x = Enumerable.Range(0, d.OutFeatures).Select(j => Sign(Norm(d.Norm, j, Dot(d.Weights, j, d.InFeatures, x)))).ToArray();
                    break;
                case OutputLayer out_:
                    x = Enumerable.Range(0, out_.Classes).Select(j => Dot(out_.Weights, j, out_.InFeatures, x)).ToArray();
                    break;
            }
        }
        return x;
    }

    private static double Dot(sbyte[] w, int row, int n, double[] x)
    {
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            sum += w[(row * n) + i] * x[i];
        }
        return sum;
    }

    private static double Norm(BatchNormParameters bn, int j, double a) =>
        (bn.Gamma[j] * (a - bn.Mean[j]) / Math.Sqrt((double)bn.Variance[j] + bn.Epsilon)) + bn.Beta[j];

    private static double Sign(double v) => v >= 0 ? 1 : -1;
}
