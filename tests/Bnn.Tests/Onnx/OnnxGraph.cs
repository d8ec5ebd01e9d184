using Bnn.Onnx;
using Bnn.Onnx.Proto;
using Google.Protobuf;

namespace Bnn.Tests.Onnx;

/// <summary>Builds small ONNX graphs by hand, the way a PyTorch or Keras exporter would write them.</summary>
internal sealed class OnnxGraph
{
    private readonly GraphProto graph = new() { Name = "test" };
    private int counter;

    public OnnxGraph(int channels, int height, int width, string input = "input")
    {
        graph.Input.Add(Info(input, new long?[] { null, channels, height, width }));
        Last = input;
    }

    /// <summary>The most recent node output.</summary>
    public string Last { get; private set; }

    public string Const(float[] values, params long[] dims)
    {
        string name = $"c{counter++}";
        graph.Initializer.Add(Constant.FloatTensor(name, values, dims));
        return name;
    }

    public string Ints(long[] values)
    {
        string name = $"i{counter++}";
        graph.Initializer.Add(Constant.Int64Tensor(name, values, values.Length));
        return name;
    }

    public string Node(string op, string[] inputs, params AttributeProto[] attributes)
    {
        var node = new NodeProto { OpType = op, Name = $"{op}_{counter}" };
        node.Input.AddRange(inputs);
        node.Output.Add($"v{counter++}");
        node.Attribute.AddRange(attributes);
        graph.Node.Add(node);
        Last = node.Output[0];
        return Last;
    }

    /// <summary>A node on the last output with a constant second operand.</summary>
    public string Apply(string op, float[] constant, params long[] dims) => Node(op, [Last, Const(constant, dims)]);

    public static AttributeProto Int(string name, long v) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = v };

    public static AttributeProto Float(string name, float v) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = v };

    public static AttributeProto IntList(string name, params long[] v)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        a.Ints.AddRange(v);
        return a;
    }

    public byte[] Build(int classes, int opset = 13)
    {
        graph.Output.Add(Info(Last, new long?[] { null, classes }));
        var model = new ModelProto { IrVersion = 7, ProducerName = "test", Graph = graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = opset });
        return model.ToByteArray();
    }

    private static ValueInfoProto Info(string name, long?[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
        {
            shape.Dim.Add(d is long v ? new TensorShapeProto.Types.Dimension { DimValue = v } : new TensorShapeProto.Types.Dimension { DimParam = "N" });
        }
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = Constant.Float, Shape = shape } } };
    }

    /// <summary>Random ±1 values.</summary>
    public static float[] Signs(Random rng, int n) => Enumerable.Range(0, n).Select(_ => rng.Next(2) == 0 ? 1f : -1f).ToArray();

    /// <summary>Random floats in [lo, hi).</summary>
    public static float[] Uniform(Random rng, int n, double lo, double hi) => Enumerable.Range(0, n).Select(_ => (float)(lo + (rng.NextDouble() * (hi - lo)))).ToArray();
}
