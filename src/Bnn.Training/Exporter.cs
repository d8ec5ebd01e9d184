using Bnn.Data;
using Bnn.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>Turns a trained <see cref="BinaryNetwork"/> into a <see cref="BnnModel"/> (batch norm folded at load).</summary>
public static class Exporter
{
    /// <summary>Loads the network stored in a checkpoint and converts it.</summary>
    public static BnnModel FromCheckpoint(string checkpointPath)
    {
        using var net = LoadNetwork(checkpointPath);
        return ToModel(net, checkpointPath);
    }

    internal static BinaryNetwork LoadNetwork(string checkpointPath, bool channelsLast = false)
    {
        var net = Checkpoint.NetworkFor(Checkpoint.ReadHeader(checkpointPath), channelsLast);
        Checkpoint.ReadState(checkpointPath, net, null);
        net.eval();
        return net;
    }

    internal static BnnModel ToModel(BinaryNetwork net, string source, int inChannels = 3, int height = 32, int width = 32)
    {
        if (!net.Binarized)
        {
            throw new BnnDataException($"{source}: a float network (a distillation teacher) has no bit-packed model");
        }
        var layers = new List<Layer>();
        foreach (var stage in net.Stages)
        {
            switch (stage)
            {
                case BinaryNetwork.ConvStage c:
                {
                    if (c.PoolSize > 0 && c.Norm.weight!.lt(0).any().item<bool>())
                    {
                        // Pooling then thresholding is an OR of thresholds only while the threshold rises with the sum.
                        throw new BnnDataException(
                            $"{source}: conv stage {layers.Count} pools before a batch norm with a negative scale, which the engine's OR pool cannot reproduce");
                    }
                    var shape = c.Weight.shape;
                    layers.Add(new ConvLayer((int)shape[0], (int)shape[1], (int)shape[2], (int)shape[3], c.Spec.Stride, c.Spec.Padding,
                        c.PadValue, c.IsFirst, Signs(c.Weight), Norm(c.Norm.weight!, c.Norm.bias!, c.Norm.running_mean!, c.Norm.running_var!, c.Norm.eps)));
                    break;
                }
                case MaxPool2d or BinaryNetwork.PooledInConvStage:
                    layers.Add(new MaxPoolLayer(PoolSize(net, layers.Count)));
                    break;
                case BinaryNetwork.DenseStage d:
                    layers.Add(new DenseLayer((int)d.Weight.shape[1], (int)d.Weight.shape[0], Signs(d.Weight),
                        Norm(d.Norm.weight!, d.Norm.bias!, d.Norm.running_mean!, d.Norm.running_var!, d.Norm.eps)));
                    break;
                case BinaryNetwork.OutputStage o:
                    layers.Add(new OutputLayer((int)o.Weight.shape[1], (int)o.Weight.shape[0], Signs(o.Weight), (float)Math.Exp(o.LogScale.item<float>())));
                    break;
                default:
                    throw new BnnDataException($"{source}: cannot export stage {stage.GetType().Name}");
            }
        }
        return new BnnModel(new Shape(inChannels, height, width), layers, source);
    }

    private static int PoolSize(BinaryNetwork net, int index) => ((PoolSpec)net.Specs[index]).Size;

    /// <summary>sign(w) with sign(0) = +1, flattened in PyTorch order.</summary>
    private static sbyte[] Signs(Tensor w)
    {
        var values = w.detach().cpu().to_type(float32).data<float>().ToArray();
        return values.Select(v => v >= 0 ? (sbyte)1 : (sbyte)-1).ToArray();
    }

    private static BatchNormParameters Norm(Tensor gamma, Tensor beta, Tensor mean, Tensor variance, double eps) => new(
        F32(gamma), F32(beta), F32(mean), F32(variance), (float)eps);

    private static float[] F32(Tensor t) => t.detach().cpu().to_type(float32).data<float>().ToArray();
}
