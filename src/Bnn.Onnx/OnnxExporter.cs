using Bnn.Data;
using Bnn.IO;
using Bnn.Model;
using Bnn.Onnx.Proto;
using Google.Protobuf;

namespace Bnn.Onnx;

/// <summary>
/// Writes a <see cref="BnnModel"/> as an ONNX graph in the BNN profile (docs/onnx-profile.md), built so that any
/// float32 runtime computes it exactly: pixel levels are small integers, every ±1 dot product is an integer sum far
/// below 2^24, and each folded threshold becomes <c>Sign(±(acc + ½ − bound))</c>, a half-integer that is never 0.
/// </summary>
public static class OnnxExporter
{
    /// <summary>Opset of the graphs we write.</summary>
    public const int Opset = 13;

    /// <summary>Name of the graph input: float32 pixels 0..255, [N, C, H, W].</summary>
    public const string InputName = "pixels";

    /// <summary>Name of the graph output: the class scores, [N, classes].</summary>
    public const string OutputName = "scores";

    /// <summary>Writes the ONNX file atomically (temporary file, then rename).</summary>
    public static void Save(BnnModel model, string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        AtomicFile.WriteAllBytes(path, Export(model).ToByteArray());
    }

    /// <summary>The ONNX model bytes of <paramref name="model"/>.</summary>
    public static byte[] ToBytes(BnnModel model) => Export(model).ToByteArray();

    internal static ModelProto Export(BnnModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var g = new GraphProto { Name = "bnn" };
        g.Input.Add(TensorInfo(InputName, "batch", model.Input.Channels, model.Input.Height, model.Input.Width));
        string x = InputName;
        for (int i = 0; i < model.Layers.Count; i++)
        {
            string at = $"l{i}";
            switch (model.Layers[i])
            {
                case ConvLayer c:
                    if (c.IsInputLayer)
                    {
                        x = Preprocess(g, c, x);
                    }
                    int pads = c.Padding;
                    if (!c.IsInputLayer && c.Padding > 0 && c.PadValue != 0)
                    {
                        // ONNX Conv pads with 0; our binary layers pad with ±1, so the padding is an explicit Pad node.
                        g.Initializer.Add(Constant.Int64Tensor($"{at}.pads", [0, 0, c.Padding, c.Padding, 0, 0, c.Padding, c.Padding], 8));
                        g.Initializer.Add(Constant.FloatTensor($"{at}.pad_value", [c.PadValue]));
                        x = Node(g, "Pad", at + ".pad", [x, $"{at}.pads", $"{at}.pad_value"]);
                        pads = 0;
                    }
                    g.Initializer.Add(Constant.FloatTensor($"{at}.weight", Floats(c.Weights), c.OutChannels, c.InChannels, c.KernelH, c.KernelW));
                    x = Node(g, "Conv", at + ".conv", [x, $"{at}.weight"],
                        Ints("kernel_shape", c.KernelH, c.KernelW), Ints("strides", c.Stride, c.Stride), Ints("pads", pads, pads, pads, pads));
                    x = Binarize(g, at, x, c.Threshold, c.MaxInputMagnitude * c.TapsPerOutput, [1, c.OutChannels, 1, 1]);
                    break;
                case MaxPoolLayer p:
                    x = Node(g, "MaxPool", at + ".pool", [x], Ints("kernel_shape", p.Size, p.Size), Ints("strides", p.Size, p.Size));
                    break;
                case DenseLayer d:
                    x = Dense(g, at, x, d.Weights, d.OutFeatures, d.InFeatures, i, model);
                    x = Binarize(g, at, x, d.Threshold, d.InFeatures, [d.OutFeatures]);
                    break;
                case OutputLayer o:
                    x = Dense(g, at, x, o.Weights, o.Classes, o.InFeatures, i, model);
                    break;
                default:
                    throw new BnnDataException($"layer {i} ({model.Layers[i].Kind}) cannot be exported");
            }
        }
        g.Node[^1].Output[0] = OutputName;
        g.Output.Add(TensorInfo(OutputName, "batch", model.Classes));
        var proto = new ModelProto { IrVersion = 7, ProducerName = "bnn", ProducerVersion = "1", Graph = g, DocString = "BNN exported by bnn (docs/onnx-profile.md)" };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        return proto;
    }

    /// <summary>Pixel levels as float32 ops: our standard code 2p − 255, or any per-channel a·p + b with integer a, b.</summary>
    private static string Preprocess(GraphProto g, ConvLayer c, string x)
    {
        var a = new float[c.InChannels];
        var b = new float[c.InChannels];
        for (int ch = 0; ch < c.InChannels; ch++)
        {
            b[ch] = c.PixelLevel(ch, 0);
            a[ch] = c.PixelLevel(ch, 1) - b[ch];
            for (int p = 0; p < 256; p++)
            {
                if (c.PixelLevel(ch, (byte)p) != (a[ch] * p) + b[ch])
                {
                    throw new BnnDataException($"the input layer's pixel levels on channel {ch} are not affine in the pixel value, so they have no exact ONNX preprocessing");
                }
            }
        }
        g.Initializer.Add(Constant.FloatTensor("pre.scale", a, 1, c.InChannels, 1, 1));
        g.Initializer.Add(Constant.FloatTensor("pre.offset", b, 1, c.InChannels, 1, 1));
        x = Node(g, "Mul", "pre.mul", [x, "pre.scale"]);
        return Node(g, "Add", "pre.add", [x, "pre.offset"]);
    }

    private static string Dense(GraphProto g, string at, string x, sbyte[] weights, int outF, int inF, int index, BnnModel model)
    {
        if (index > 0 && model.Layers[index - 1] is ConvLayer or MaxPoolLayer)
        {
            x = Node(g, "Flatten", at + ".flatten", [x], new AttributeProto { Name = "axis", Type = AttributeProto.Types.AttributeType.Int, I = 1 });
        }
        g.Initializer.Add(Constant.FloatTensor($"{at}.weight", Floats(weights), outF, inF));
        return Node(g, "Gemm", at + ".gemm", [x, $"{at}.weight"], new AttributeProto { Name = "transB", Type = AttributeProto.Types.AttributeType.Int, I = 1 });
    }

    /// <summary>
    /// +1 ⇔ (a ≥ bound) ≠ flip, as Sign(s·(a + ½ − bound)) with s = −1 where flipped. Bounds are clamped to the
    /// reachable accumulator range first, which keeps every value exact in float32 and changes no decision.
    /// </summary>
    private static string Binarize(GraphProto g, string at, string x, Threshold t, long maxAccumulator, long[] shape)
    {
        var offset = new float[t.Count];
        var sign = new float[t.Count];
        for (int j = 0; j < t.Count; j++)
        {
            long bound = Math.Clamp(t.Bound[j], -maxAccumulator, maxAccumulator + 1);
            offset[j] = 0.5f - bound;
            sign[j] = t.Flip[j] ? -1 : 1;
        }
        g.Initializer.Add(Constant.FloatTensor($"{at}.offset", offset, shape));
        x = Node(g, "Add", at + ".threshold", [x, $"{at}.offset"]);
        if (t.Flip.Any(f => f))
        {
            g.Initializer.Add(Constant.FloatTensor($"{at}.direction", sign, shape));
            x = Node(g, "Mul", at + ".direction", [x, $"{at}.direction"]);
        }
        return Node(g, "Sign", at + ".sign", [x]);
    }

    private static string Node(GraphProto g, string op, string name, string[] inputs, params AttributeProto[] attributes)
    {
        var node = new NodeProto { OpType = op, Name = name };
        node.Input.AddRange(inputs);
        node.Output.Add(name + ".out");
        node.Attribute.AddRange(attributes);
        g.Node.Add(node);
        return name + ".out";
    }

    private static AttributeProto Ints(string name, params long[] values)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        a.Ints.AddRange(values);
        return a;
    }

    private static float[] Floats(sbyte[] weights) => weights.Select(w => (float)w).ToArray();

    private static ValueInfoProto TensorInfo(string name, string batch, params int[] dims)
    {
        var shape = new TensorShapeProto();
        shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimParam = batch });
        foreach (int d in dims)
        {
            shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        }
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = Constant.Float, Shape = shape } } };
    }
}
