using Bnn.Data;
using Bnn.Model;
using Bnn.Onnx.Proto;
using Google.Protobuf;

namespace Bnn.Onnx;

/// <summary>
/// Imports an ONNX model in the BNN profile (docs/onnx-profile.md) into a <see cref="BnnModel"/>: preprocessing and
/// the first conv become integer pixel levels, every per-channel affine chain followed by a binarization becomes an
/// integer threshold, and the model computes exactly what the ONNX graph computes. Anything outside the profile is a
/// <see cref="BnnDataException"/> that names the node and the reason; nothing is returned half-built.
/// </summary>
public static class OnnxImporter
{
    /// <summary>Reads and imports an ONNX file.</summary>
    public static BnnModel Import(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (IOException e)
        {
            throw new BnnDataException($"{path}: cannot read: {e.Message}", e);
        }
        return Import(bytes, path);
    }

    /// <summary>Imports ONNX model bytes; <paramref name="source"/> names them in errors.</summary>
    public static BnnModel Import(byte[] bytes, string source)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        ModelProto proto;
        try
        {
            proto = ModelProto.Parser.ParseFrom(bytes);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new BnnDataException($"{source}: not an ONNX model (protobuf: {e.Message})", e);
        }
        try
        {
            return new GraphWalker(proto, source).Run();
        }
        catch (BnnDataException e) when (!e.Message.StartsWith(source, StringComparison.Ordinal))
        {
            throw new BnnDataException($"{source}: {e.Message}", e);
        }
    }
}

/// <summary>What a value of the graph is, as far as the BNN profile is concerned.</summary>
internal abstract record Value;

/// <summary>Raw pixels (0..255 per channel) after elementwise float32 preprocessing.</summary>
internal sealed record PixelValue(IReadOnlyList<Func<int, float, float>> Steps, int Pad) : Value;

/// <summary>±1 activations of shape (C, H, W), or flattened; <paramref name="Pad"/>/<paramref name="PadValue"/> are from a Pad node.</summary>
internal sealed record BinaryValue(Shape Shape, bool Flat, int Pad, int PadValue) : Value
{
    public int Features => Shape.Size;
}

/// <summary>A layer's accumulator and the per-channel steps applied to it so far.</summary>
internal sealed record AccumulatorValue(PendingLayer Layer, ChannelChain Chain) : Value;

/// <summary>A comparison (Greater/GreaterOrEqual with a constant) waiting for its Where.</summary>
internal sealed record ComparisonValue(AccumulatorValue Source, double[] Threshold, bool Inclusive) : Value;

/// <summary>Integers from shape arithmetic (Shape, Gather, Concat, ...); −1 stands for the batch size.</summary>
internal sealed record ShapeValue(long[] Values) : Value;

/// <summary>A conv or dense layer whose binarization (or the graph output) has not been seen yet.</summary>
internal sealed record PendingLayer(string Node, Func<BatchNormParameters?, Layer> Build, Shape OutShape, bool Dense)
{
    /// <summary>Pool size of a MaxPool applied to the accumulator before the threshold, or 0.</summary>
    public int Pool { get; init; }

    /// <summary>Channel steps already applied when the pool came (they must be increasing for the pool to commute).</summary>
    public int OpsBeforePool { get; init; }
}

internal sealed class GraphWalker
{
    private const int BatchMarker = -1;
    private readonly ModelProto model;
    private readonly string source;
    private readonly Dictionary<string, Constant> constants = [];
    private readonly Dictionary<string, Value> values = [];
    private readonly List<Layer> layers = [];
    private Shape input;

    public GraphWalker(ModelProto model, string source)
    {
        this.model = model;
        this.source = source;
    }

    public BnnModel Run()
    {
        var graph = model.Graph ?? throw new BnnDataException("the model has no graph");
        foreach (var opset in model.OpsetImport)
        {
            if (opset.Domain is "" or "ai.onnx" && (opset.Version < 7 || opset.Version > 30))
            {
                throw new BnnDataException($"ONNX opset {opset.Version} is not supported (7..30)");
            }
        }
        foreach (var t in graph.Initializer)
        {
            if (string.IsNullOrEmpty(t.Name))
            {
                throw new BnnDataException("an initializer has no name");
            }
            constants[t.Name] = Constant.Read(t, $"initializer '{t.Name}'");
        }
        var inputs = graph.Input.Where(i => !constants.ContainsKey(i.Name)).ToList();
        if (inputs.Count != 1)
        {
            throw new BnnDataException($"the graph must have exactly one non-constant input (the pixels), found {inputs.Count}");
        }
        input = InputShape(inputs[0]);
        values[inputs[0].Name] = new PixelValue([], 0);
        foreach (var node in graph.Node)
        {
            Visit(node);
        }
        if (graph.Output.Count != 1)
        {
            throw new BnnDataException($"the graph must have exactly one output (the scores), found {graph.Output.Count}");
        }
        string output = graph.Output[0].Name;
        if (!values.TryGetValue(output, out var final) || final is not AccumulatorValue { Layer.Dense: true } scores)
        {
            throw new BnnDataException($"the graph output '{output}' must be the scores of a final Gemm/MatMul layer");
        }
        layers.Add(FinishOutput(scores));
        try
        {
            return new BnnModel(input, layers, source);
        }
        catch (BnnDataException e)
        {
            throw new BnnDataException($"the imported layers do not form a valid model: {e.Message}", e);
        }
    }

    private static Shape InputShape(ValueInfoProto info)
    {
        var tensor = info.Type?.TensorType ?? throw new BnnDataException($"input '{info.Name}' is not a tensor");
        if (tensor.ElemType != Constant.Float)
        {
            throw new BnnDataException($"input '{info.Name}' must be float32 pixels 0..255 (element type {tensor.ElemType})");
        }
        var dims = tensor.Shape?.Dim;
        if (dims is null || dims.Count != 4)
        {
            throw new BnnDataException($"input '{info.Name}' must have shape [N, C, H, W]");
        }
        var chw = new int[3];
        for (int i = 1; i < 4; i++)
        {
            if (dims[i].ValueCase != TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue || dims[i].DimValue is <= 0 or > 4096)
            {
                throw new BnnDataException($"input '{info.Name}': dimension {i} must be a fixed size in 1..4096 (C, H and W cannot be dynamic)");
            }
            chw[i - 1] = (int)dims[i].DimValue;
        }
        return new Shape(chw[0], chw[1], chw[2]);
    }

    private void Visit(NodeProto node)
    {
        string name = string.IsNullOrEmpty(node.Name) ? $"{node.OpType}->{node.Output.FirstOrDefault()}" : node.Name;
        if (node.Domain is not ("" or "ai.onnx"))
        {
            throw Fail(name, node.OpType, $"operator domain '{node.Domain}' is outside the BNN profile");
        }
        if (node.Output.Count == 0)
        {
            throw Fail(name, node.OpType, "has no output");
        }
        try
        {
            var result = Evaluate(node, name);
            if (result is not null)
            {
                values[node.Output[0]] = result;
            }
        }
        catch (BnnDataException e) when (!e.Message.StartsWith("node '", StringComparison.Ordinal))
        {
            throw Fail(name, node.OpType, e.Message);
        }
    }

    private static BnnDataException Fail(string name, string op, string reason) => new($"node '{name}' ({op}): {reason}");

    /// <summary>Returns the node's value, or null when it defined a constant instead.</summary>
    private Value? Evaluate(NodeProto node, string name)
    {
        switch (node.OpType)
        {
            case "Constant":
                var tensor = Attribute(node, "value")?.T ?? throw new BnnDataException("only the 'value' tensor form is supported");
                constants[node.Output[0]] = Constant.Read(tensor, $"constant '{node.Output[0]}'");
                return null;
            case "Identity" or "Dropout":
                return Input(node, 0);
            case "Shape":
                return Input(node, 0) switch
                {
                    BinaryValue { Flat: false } b => new ShapeValue([BatchMarker, b.Shape.Channels, b.Shape.Height, b.Shape.Width]),
                    BinaryValue b => new ShapeValue([BatchMarker, b.Features]),
                    _ => throw new BnnDataException("only the shape of binary activations can be taken"),
                };
            case "Gather":
                return Gather(node);
            case "Unsqueeze" when IsShape(node, 0):
                return Input(node, 0);
            case "Concat" when IsShape(node, 0):
                return new ShapeValue(node.Input.SelectMany(i => ShapeOf(i)).ToArray());
            case "Sign":
                return Binarize(Input(node, 0), [], inclusive: false, signTie: true, name);
            case "Where":
                return Where(node, name);
            case "Greater" or "GreaterOrEqual":
                return Compare(node);
            case "MaxPool":
                return MaxPool(node);
            case "Pad":
                return Pad(node);
            case "Conv":
                return Conv(node, name);
            case "Gemm":
                return Gemm(node, name);
            case "MatMul":
                return MatMul(node, name);
            case "Flatten":
                return Flatten(node);
            case "Reshape":
                return Reshape(node);
            case "BatchNormalization":
                return Norm(node);
            case "Clip" when Input(node, 0) is AccumulatorValue:
                return ClipAccumulator(node);
            case "Add" or "Sub" or "Mul" or "Div" or "Neg" or "Floor" or "Ceil" or "Round" or "Clip" or "Relu" or "Cast":
                return Elementwise(node);
            default:
                throw new BnnDataException("operator is outside the BNN profile");
        }
    }

    private Value Input(NodeProto node, int i)
    {
        if (node.Input.Count <= i || node.Input[i].Length == 0)
        {
            throw new BnnDataException($"input {i} is missing");
        }
        string n = node.Input[i];
        if (values.TryGetValue(n, out var v))
        {
            return v;
        }
        throw constants.ContainsKey(n)
            ? new BnnDataException($"input '{n}' is a constant where the profile expects activations")
            : new BnnDataException($"input '{n}' is not produced by any earlier node (the graph must be in topological order)");
    }

    private Constant? OptionalConstant(NodeProto node, int i)
    {
        if (node.Input.Count <= i || node.Input[i].Length == 0)
        {
            return null;
        }
        if (constants.TryGetValue(node.Input[i], out var c))
        {
            return c;
        }
        if (values.TryGetValue(node.Input[i], out var v) && v is ShapeValue s)
        {
            return new Constant([s.Values.Length], s.Values.Select(x => (double)x).ToArray());
        }
        throw new BnnDataException($"input '{node.Input[i]}' must be a constant (an initializer or a Constant node)");
    }

    private Constant ConstantInput(NodeProto node, int i) =>
        OptionalConstant(node, i) ?? throw new BnnDataException($"constant input {i} is missing");

    private bool IsShape(NodeProto node, int i) =>
        node.Input.Count > i && values.TryGetValue(node.Input[i], out var v) && v is ShapeValue;

    private long[] ShapeOf(string name)
    {
        if (values.TryGetValue(name, out var v) && v is ShapeValue s)
        {
            return s.Values;
        }
        if (constants.TryGetValue(name, out var c) && c.Count <= 8)
        {
            return c.Values.Select(x => (long)x).ToArray();
        }
        throw new BnnDataException($"'{name}' is not a shape the importer can resolve");
    }

    private ShapeValue Gather(NodeProto node)
    {
        if (!IsShape(node, 0))
        {
            throw new BnnDataException("Gather is only supported on shapes");
        }
        var data = ShapeOf(node.Input[0]);
        var indices = ConstantInput(node, 1);
        if (AttributeInt(node, "axis", 0) != 0)
        {
            throw new BnnDataException("Gather on a shape must use axis 0");
        }
        return new ShapeValue(indices.Values.Select(i =>
        {
            long k = (long)i < 0 ? (long)i + data.Length : (long)i;
            return k >= 0 && k < data.Length ? data[k] : throw new BnnDataException($"index {i} is out of range");
        }).ToArray());
    }

    private static AttributeProto? Attribute(NodeProto node, string name) => node.Attribute.FirstOrDefault(a => a.Name == name);

    private static long AttributeInt(NodeProto node, string name, long fallback) => Attribute(node, name) is { } a ? a.I : fallback;

    private static float AttributeFloat(NodeProto node, string name, float fallback) => Attribute(node, name) is { } a ? a.F : fallback;

    private static long[]? AttributeInts(NodeProto node, string name) => Attribute(node, name)?.Ints.ToArray();

    // ----- binarization -----

    private BinaryValue Binarize(Value v, double[] threshold, bool inclusive, bool signTie, string name)
    {
        if (v is not AccumulatorValue acc)
        {
            throw new BnnDataException("binarization must follow a Conv or Gemm/MatMul layer (and its per-channel affine steps)");
        }
        var chain = acc.Chain;
        var c = threshold.Length == 0 ? new double[chain.Channels] : threshold;
        if (chain.Clipped && c.Any(x => x != 0))
        {
            throw new BnnDataException("a Clip before a comparison with a nonzero constant is outside the profile");
        }
        var layer = acc.Layer;
        if (layer.Pool > 0)
        {
            for (int j = 0; j < chain.Channels; j++)
            {
                if (chain.Composite(j).Slope < 0 || PrefixSlope(chain, layer.OpsBeforePool, j) < 0)
                {
                    throw new BnnDataException(
                        $"the MaxPool of node '{layer.Node}' comes before a decreasing scale on channel {j}; max-pool then commutes with neither, so it cannot be moved after the binarization");
                }
            }
        }
        var (bound, flip) = chain.Fold(c, inclusive, signTie, name);
        layers.Add(layer.Build(BatchNormParameters.FromThreshold(bound, flip)));
        if (layer.Pool > 0)
        {
            layers.Add(new MaxPoolLayer(layer.Pool));
            var s = layer.OutShape;
            return new BinaryValue(new Shape(s.Channels, s.Height / layer.Pool, s.Width / layer.Pool), false, 0, 0);
        }
        return new BinaryValue(layer.OutShape, layer.Dense, 0, 0);
    }

    private static double PrefixSlope(ChannelChain chain, int count, int j)
    {
        double slope = chain.InputScale;
        for (int i = 0; i < count; i++)
        {
            slope *= chain.Ops[i].Affine(j).Slope;
        }
        return slope;
    }

    private ComparisonValue Compare(NodeProto node)
    {
        bool inclusive = node.OpType == "GreaterOrEqual";
        if (node.Input.Count != 2)
        {
            throw new BnnDataException("needs two inputs");
        }
        if (values.TryGetValue(node.Input[0], out var left) && left is AccumulatorValue acc)
        {
            return new ComparisonValue(acc, PerChannel(ConstantInput(node, 1), acc), inclusive);
        }
        if (values.TryGetValue(node.Input[1], out var right) && right is AccumulatorValue acc2)
        {
            // c ≥ y ⇔ −y ≥ −c: negate the chain and the constant.
            var negated = WithOp(acc2, new NegOp());
            return new ComparisonValue(negated, PerChannel(ConstantInput(node, 0), acc2).Select(x => -x).ToArray(), inclusive);
        }
        throw new BnnDataException("a comparison must compare a layer's accumulator chain with a constant");
    }

    private BinaryValue Where(NodeProto node, string name)
    {
        if (Input(node, 0) is not ComparisonValue cmp)
        {
            throw new BnnDataException("Where must select on a Greater/GreaterOrEqual of a layer's values");
        }
        double whenTrue = Uniform(ConstantInput(node, 1)), whenFalse = Uniform(ConstantInput(node, 2));
        if (whenTrue == 1 && whenFalse == -1)
        {
            return Binarize(cmp.Source, cmp.Threshold, cmp.Inclusive, signTie: false, name);
        }
        if (whenTrue == -1 && whenFalse == 1)
        {
            // +1 ⇔ ¬(y ≥ c) ⇔ −y > −c (and ¬(y > c) ⇔ −y ≥ −c).
            var negated = WithOp(cmp.Source, new NegOp());
            return Binarize(negated, cmp.Threshold.Select(x => -x).ToArray(), !cmp.Inclusive, signTie: false, name);
        }
        throw new BnnDataException($"Where must choose between the constants +1 and −1 (got {whenTrue} and {whenFalse})");
    }

    private static double Uniform(Constant c)
    {
        if (c.Count == 0 || c.Values.Any(v => v != c.Values[0]))
        {
            throw new BnnDataException("expected a constant with one value");
        }
        return c.Values[0];
    }

    // ----- per-channel affine steps -----

    private static AccumulatorValue WithOp(AccumulatorValue acc, ChannelOp op)
    {
        var chain = acc.Chain.Copy(acc.Chain.Clipped);
        chain.Ops.Add(op);
        return acc with { Chain = chain };
    }

    /// <summary>A constant broadcast over a layer's values, one number per channel (or one for all).</summary>
    private static double[] PerChannel(Constant c, AccumulatorValue acc)
    {
        int n = acc.Chain.Channels;
        if (c.Count == 1)
        {
            return Enumerable.Repeat(c.Values[0], n).ToArray();
        }
        // (K), (1, K) for dense values [N, K]; (K, 1, 1), (1, K, 1, 1) for conv values [N, K, H, W].
        var nonUnit = c.Dims.Select((d, i) => (d, axisFromEnd: c.Dims.Length - i)).Where(x => x.d != 1).ToList();
        int channelAxisFromEnd = acc.Layer.Dense ? 1 : 3;
        if (c.Count == n && nonUnit.Count == 1 && nonUnit[0].axisFromEnd == channelAxisFromEnd)
        {
            return c.Values;
        }
        throw new BnnDataException($"constant of shape [{string.Join(",", c.Dims)}] is not per-channel for {n} channels");
    }

    /// <summary>An operand that is per channel by the op's definition (Conv bias, BatchNormalization inputs): shape [n].</summary>
    private static double[] ChannelVector(Constant c, int n) => c.Dims.Length == 1 && c.Count == n
        ? c.Values
        : throw new BnnDataException($"expected a vector of {n} values, got shape [{string.Join(",", c.Dims)}]");

    private Value Norm(NodeProto node)
    {
        if (Input(node, 0) is not AccumulatorValue acc)
        {
            throw new BnnDataException("BatchNormalization must follow a Conv or Gemm/MatMul layer");
        }
        if (AttributeInt(node, "training_mode", 0) != 0 || node.Output.Count > 1 && node.Output.Skip(1).Any(o => o.Length > 0))
        {
            throw new BnnDataException("only inference-mode BatchNormalization (one output) is in the profile");
        }
        float eps = AttributeFloat(node, "epsilon", 1e-5f);
        var parts = Enumerable.Range(1, 4).Select(i => ChannelVector(ConstantInput(node, i), acc.Chain.Channels)).ToArray();
        if (!float.IsFinite(eps) || eps < 0 || parts[3].Any(v => v + eps <= 0))
        {
            throw new BnnDataException("variance + epsilon must be positive");
        }
        return WithOp(acc, new NormOp(parts[0], parts[1], parts[2], parts[3], eps));
    }

    private AccumulatorValue ClipAccumulator(NodeProto node)
    {
        var acc = (AccumulatorValue)Input(node, 0);
        double min = OptionalConstant(node, 1) is { } lo ? Uniform(lo) : AttributeFloat(node, "min", float.NegativeInfinity);
        double max = OptionalConstant(node, 2) is { } hi ? Uniform(hi) : AttributeFloat(node, "max", float.PositiveInfinity);
        if (!(min < 0 && max > 0))
        {
            throw new BnnDataException("a Clip before binarization must keep the sign (min < 0 < max)");
        }
        return acc with { Chain = acc.Chain.Copy(clipped: true) };
    }

    private Value Elementwise(NodeProto node)
    {
        bool unary = node.OpType is "Neg" or "Floor" or "Ceil" or "Round" or "Relu" or "Cast" or "Clip";
        int dataIndex = 0;
        if (!unary && !values.ContainsKey(node.Input[0]))
        {
            dataIndex = 1;
        }
        var data = Input(node, dataIndex);
        return data switch
        {
            AccumulatorValue acc => AffineStep(node, acc, dataIndex),
            PixelValue px => PixelStep(node, px, dataIndex),
            _ => throw new BnnDataException("elementwise ops are allowed on the input pixels and on a layer's values before binarization"),
        };
    }

    private AccumulatorValue AffineStep(NodeProto node, AccumulatorValue acc, int dataIndex)
    {
        if (node.OpType == "Neg")
        {
            return WithOp(acc, new NegOp());
        }
        if (node.OpType is not ("Add" or "Sub" or "Mul" or "Div"))
        {
            throw new BnnDataException("on a layer's values only Add, Sub, Mul, Div, Neg, Clip and BatchNormalization are in the profile");
        }
        var c = PerChannel(ConstantInput(node, 1 - dataIndex), acc);
        return (node.OpType, dataIndex) switch
        {
            ("Add", _) => WithOp(acc, new AddOp(c)),
            ("Mul", _) => WithOp(acc, new MulOp(c)),
            ("Sub", 0) => WithOp(acc, new AddOp(c.Select(x => (double)-(float)x).ToArray())),
            ("Sub", _) => WithOp(WithOp(acc, new NegOp()), new AddOp(c)),
            ("Div", 0) when c.All(x => (float)x != 0) => WithOp(acc, new DivOp(c)),
            _ => throw new BnnDataException("dividing by a layer's values, or by zero, is outside the profile"),
        };
    }

    private PixelValue PixelStep(NodeProto node, PixelValue px, int dataIndex)
    {
        if (px.Pad > 0)
        {
            throw new BnnDataException("preprocessing after a Pad is outside the profile");
        }
        int channels = input.Channels;
        Func<int, float, float> step;
        switch (node.OpType)
        {
            case "Add" or "Sub" or "Mul" or "Div":
                var c = PixelConstant(ConstantInput(node, 1 - dataIndex), channels);
                bool left = dataIndex == 0;
                step = node.OpType switch
                {
                    "Add" => (ch, x) => x + c[ch],
                    "Mul" => (ch, x) => x * c[ch],
                    "Sub" => left ? (ch, x) => x - c[ch] : (ch, x) => c[ch] - x,
                    _ => left ? (ch, x) => x / c[ch] : (ch, x) => c[ch] / x,
                };
                break;
            case "Neg":
                step = (_, x) => -x;
                break;
            case "Floor":
                step = (_, x) => MathF.Floor(x);
                break;
            case "Ceil":
                step = (_, x) => MathF.Ceiling(x);
                break;
            case "Round":
                step = (_, x) => MathF.Round(x, MidpointRounding.ToEven);
                break;
            case "Relu":
                step = (_, x) => x < 0 ? 0 : x;
                break;
            case "Clip":
                float min = OptionalConstant(node, 1) is { } lo ? (float)Uniform(lo) : AttributeFloat(node, "min", float.NegativeInfinity);
                float max = OptionalConstant(node, 2) is { } hi ? (float)Uniform(hi) : AttributeFloat(node, "max", float.PositiveInfinity);
                step = (_, x) => MathF.Min(MathF.Max(x, min), max);
                break;
            case "Cast":
                long to = AttributeInt(node, "to", 0);
                step = to switch
                {
                    Constant.Float => (_, x) => x,
                    Constant.Int32 or Constant.Int64 => (_, x) => MathF.Truncate(x),
                    _ => throw new BnnDataException($"Cast to element type {to} is outside the profile (float, int32, int64)"),
                };
                break;
            default:
                throw new BnnDataException("operator is not a preprocessing op");
        }
        return new PixelValue([.. px.Steps, step], 0);
    }

    private static float[] PixelConstant(Constant c, int channels)
    {
        if (c.Count == 1)
        {
            return Enumerable.Repeat((float)c.Values[0], channels).ToArray();
        }
        var nonUnit = c.Dims.Select((d, i) => (d, axisFromEnd: c.Dims.Length - i)).Where(x => x.d != 1).ToList();
        if (c.Count == channels && nonUnit.Count == 1 && nonUnit[0].axisFromEnd == 3)
        {
            return c.Values.Select(v => (float)v).ToArray();
        }
        throw new BnnDataException($"preprocessing constant of shape [{string.Join(",", c.Dims)}] must be a scalar or one value per channel");
    }

    // ----- layers -----

    private Value Pad(NodeProto node)
    {
        string mode = Attribute(node, "mode") is { } m ? m.S.ToStringUtf8() : "constant";
        var pads = OptionalConstant(node, 1)?.Values.Select(v => (long)v).ToArray() ?? AttributeInts(node, "pads")
            ?? throw new BnnDataException("pads are missing");
        double value = OptionalConstant(node, 2) is { } v ? Uniform(v) : AttributeFloat(node, "value", 0);
        if (mode != "constant" || pads.Length != 8 || pads[0] != 0 || pads[1] != 0 || pads[4] != 0 || pads[5] != 0
            || pads[2] != pads[3] || pads[2] != pads[6] || pads[2] != pads[7] || pads[2] is < 0 or > 64 || node.Input.Count > 3)
        {
            throw new BnnDataException("only constant, symmetric spatial padding of an NCHW tensor is in the profile");
        }
        int p = (int)pads[2];
        return Input(node, 0) switch
        {
            BinaryValue { Flat: false, Pad: 0 } b when value is 1 or -1 or 0 => b with { Pad = p, PadValue = (int)value },
            PixelValue { Pad: 0 } px when value == 0 => px with { Pad = p },
            _ => throw new BnnDataException($"padding with {value} here is outside the profile (±1 or 0 on binary activations, 0 on pixels)"),
        };
    }

    private Value MaxPool(NodeProto node)
    {
        var kernel = AttributeInts(node, "kernel_shape") ?? throw new BnnDataException("kernel_shape is missing");
        var strides = AttributeInts(node, "strides") ?? [1, 1];
        var pads = AttributeInts(node, "pads") ?? [0, 0, 0, 0];
        var dilations = AttributeInts(node, "dilations") ?? [1, 1];
        string autoPad = Attribute(node, "auto_pad") is { } ap ? ap.S.ToStringUtf8() : "NOTSET";
        if (kernel.Length != 2 || kernel[0] != kernel[1] || kernel[0] is < 1 or > 64 || strides.Length != 2 || strides[0] != kernel[0]
            || strides[1] != kernel[0] || pads.Any(p => p != 0) || dilations.Any(d => d != 1) || autoPad is not ("NOTSET" or "VALID")
            || AttributeInt(node, "ceil_mode", 0) != 0 || AttributeInt(node, "storage_order", 0) != 0 || node.Output.Count > 1 && node.Output[1].Length > 0)
        {
            throw new BnnDataException("only square, non-overlapping max-pools (kernel = stride, no padding, floor) are in the profile");
        }
        int size = (int)kernel[0];
        switch (Input(node, 0))
        {
            case BinaryValue { Flat: false, Pad: 0 } b:
                if (b.Shape.Height < size || b.Shape.Width < size)
                {
                    throw new BnnDataException($"pool {size} does not fit {b.Shape}");
                }
                layers.Add(new MaxPoolLayer(size));
                return new BinaryValue(new Shape(b.Shape.Channels, b.Shape.Height / size, b.Shape.Width / size), false, 0, 0);
            case AccumulatorValue { Layer: { Dense: false, Pool: 0 } layer } acc:
                if (layer.OutShape.Height < size || layer.OutShape.Width < size)
                {
                    throw new BnnDataException($"pool {size} does not fit {layer.OutShape}");
                }
                return acc with { Layer = layer with { Pool = size, OpsBeforePool = acc.Chain.Ops.Count } };
            default:
                throw new BnnDataException("MaxPool must act on binary activations or on a conv's values before binarization");
        }
    }

    private Value Conv(NodeProto node, string name)
    {
        var w = ConstantInput(node, 1);
        if (w.Dims.Length != 4 || w.Dims.Any(d => d <= 0))
        {
            throw new BnnDataException("weights must be a constant of shape [K, C, kh, kw]");
        }
        var strides = AttributeInts(node, "strides") ?? [1, 1];
        var pads = AttributeInts(node, "pads") ?? [0, 0, 0, 0];
        var dilations = AttributeInts(node, "dilations") ?? [1, 1];
        string autoPad = Attribute(node, "auto_pad") is { } ap ? ap.S.ToStringUtf8() : "NOTSET";
        int k = (int)w.Dims[0], c = (int)w.Dims[1], kh = (int)w.Dims[2], kw = (int)w.Dims[3];
        if (AttributeInt(node, "group", 1) != 1 || dilations.Any(d => d != 1) || autoPad is not ("NOTSET" or "VALID")
            || strides.Length != 2 || strides[0] != strides[1] || strides[0] is < 1 or > 64 || pads.Length != 4 || pads.Any(p => p != pads[0]) || pads[0] is < 0 or > 64
            || AttributeInts(node, "kernel_shape") is { } ks && (ks.Length != 2 || ks[0] != kh || ks[1] != kw))
        {
            throw new BnnDataException("only group 1, dilation 1, equal strides and symmetric padding are in the profile");
        }
        var weights = Signs(w, "weights");
        int stride = (int)strides[0], padding = (int)pads[0];
        var bias = OptionalConstant(node, 2);
        int taps = c * kh * kw;
        switch (Input(node, 0))
        {
            case PixelValue px:
                if (layers.Count > 0 || c != input.Channels)
                {
                    throw new BnnDataException("a conv on pixels must be the first layer and take every input channel");
                }
                padding += px.Pad;
                var (levels, scale) = PixelLevels(px, taps);
                long maxLevel = levels?.Max(v => Math.Abs((long)v)) ?? PixelCode.MaxAbs;
                return Accumulator(name, new Shape(c, input.Height, input.Width), (k, kh, kw), stride, padding, bias, maxLevel * taps, scale,
                    norm => new ConvLayer(k, c, kh, kw, stride, padding, 0, true, weights, norm!, levels));
            case BinaryValue { Flat: false } b:
                if (b.Shape.Channels != c)
                {
                    throw new BnnDataException($"weights expect {c} input channels but the activations have {b.Shape}");
                }
                if (b.Pad > 0 && padding > 0 && b.PadValue != 0)
                {
                    throw new BnnDataException("a ±1 Pad followed by a padded Conv mixes pad values");
                }
                // Without padding the value is moot; +1 is what our trainer writes, so exports round-trip exactly.
                int padValue = b.Pad > 0 ? b.PadValue : padding > 0 ? 0 : 1;
                padding += b.Pad;
                return Accumulator(name, b.Shape, (k, kh, kw), stride, padding, bias, taps, 1,
                    norm => new ConvLayer(k, c, kh, kw, stride, padding, padValue, false, weights, norm!));
            default:
                throw new BnnDataException("a Conv must read the input pixels or binary (±1) activations");
        }
    }

    private AccumulatorValue Accumulator(string name, Shape inShape, (int K, int Kh, int Kw) kernel, int stride, int padding, Constant? bias,
        long maxAccumulator, double scale, Func<BatchNormParameters?, Layer> build)
    {
        if (maxAccumulator >= 1 << 22)
        {
            throw new BnnDataException($"accumulators up to {maxAccumulator} are too large to be exact in float32 (2^22 at most)");
        }
        int ho = ((inShape.Height + (2 * padding) - kernel.Kh) / stride) + 1, wo = ((inShape.Width + (2 * padding) - kernel.Kw) / stride) + 1;
        if (inShape.Height + (2 * padding) < kernel.Kh || inShape.Width + (2 * padding) < kernel.Kw)
        {
            throw new BnnDataException($"kernel {kernel.Kh}x{kernel.Kw} does not fit input {inShape} with padding {padding}");
        }
        var pending = new PendingLayer(name, build, new Shape(kernel.K, ho, wo), Dense: false);
        var acc = new AccumulatorValue(pending, new ChannelChain(kernel.K, scale, maxAccumulator));
        return bias is null ? acc : WithOp(acc, new AddOp(ChannelVector(bias, kernel.K)));
    }

    /// <summary>
    /// The preprocessing evaluated on all 256 pixel values per channel, in float32 as ONNX defines each op. The first
    /// conv's float32 sums are exact, whatever their order, only if every level is a multiple of one power of two 2^−s
    /// and the sums stay below 2^24·2^−s; then our integer levels are the values times 2^s.
    /// </summary>
    private (int[]? Levels, double Scale) PixelLevels(PixelValue px, int taps)
    {
        int channels = input.Channels;
        var v = new float[channels * 256];
        for (int ch = 0; ch < channels; ch++)
        {
            for (int p = 0; p < 256; p++)
            {
                float x = p;
                foreach (var step in px.Steps)
                {
                    x = step(ch, x);
                }
                if (!float.IsFinite(x))
                {
                    throw new BnnDataException($"preprocessing gives {x} for pixel value {p} on channel {ch}");
                }
                v[(ch * 256) + p] = x;
            }
        }
        for (int s = 0; s <= 24; s++)
        {
            double scale = Math.ScaleB(1.0, s);
            if (v.All(x => Math.Floor(x * scale) == x * scale))
            {
                double max = v.Max(x => Math.Abs(x * scale));
                if (max * taps >= 1 << 22)
                {
                    break;
                }
                var levels = v.Select(x => (int)(x * scale)).ToArray();
                bool standard = Enumerable.Range(0, levels.Length).All(i => levels[i] == PixelCode.Encode((byte)(i % 256)));
                return (standard ? null : levels, 1 / scale);
            }
        }
        throw new BnnDataException(
            "the preprocessed pixels are not all multiples of one power of two small enough for exact float32 sums in the first Conv " +
            "(for example x/255 is not), so ONNX runtimes round the first layer differently from any exact engine; express the scale in a later per-channel step instead");
    }

    private Value Gemm(NodeProto node, string name)
    {
        if (AttributeInt(node, "transA", 0) != 0)
        {
            throw new BnnDataException("transA is outside the profile");
        }
        var acc = Dense(node, name, ConstantInput(node, 1), AttributeInt(node, "transB", 0) != 0);
        float alpha = AttributeFloat(node, "alpha", 1), beta = AttributeFloat(node, "beta", 1);
        if (alpha != 1)
        {
            acc = WithOp(acc, new MulOp(Enumerable.Repeat((double)alpha, acc.Chain.Channels).ToArray()));
        }
        if (OptionalConstant(node, 2) is { } c)
        {
            acc = WithOp(acc, new AddOp(PerChannel(c, acc).Select(x => (double)(beta * (float)x)).ToArray()));
        }
        return acc;
    }

    private Value MatMul(NodeProto node, string name) => Dense(node, name, ConstantInput(node, 1), transposed: false);

    private AccumulatorValue Dense(NodeProto node, string name, Constant w, bool transposed)
    {
        if (Input(node, 0) is not BinaryValue { Flat: true } b)
        {
            throw new BnnDataException("a Gemm/MatMul must read flattened binary activations (use Flatten or Reshape first)");
        }
        if (w.Dims.Length != 2)
        {
            throw new BnnDataException("weights must be a 2-D constant");
        }
        int rows = (int)w.Dims[0], cols = (int)w.Dims[1];
        int inF = transposed ? cols : rows, outF = transposed ? rows : cols;
        if (inF != b.Features)
        {
            throw new BnnDataException($"weights expect {inF} inputs but the activations have {b.Features}");
        }
        var signs = Signs(w, "weights");
        if (!transposed)
        {
            var t = new sbyte[signs.Length];
            for (int i = 0; i < inF; i++)
            {
                for (int o = 0; o < outF; o++)
                {
                    t[(o * inF) + i] = signs[(i * outF) + o];
                }
            }
            signs = t;
        }
        if (inF >= 1 << 22)
        {
            throw new BnnDataException($"{inF} inputs are too many for exact float32 sums");
        }
        var pending = new PendingLayer(name, norm => norm is null
            ? new OutputLayer(inF, outF, signs, 1)
            : new DenseLayer(inF, outF, signs, norm), new Shape(outF, 1, 1), Dense: true);
        return new AccumulatorValue(pending, new ChannelChain(outF, 1, inF));
    }

    private static sbyte[] Signs(Constant w, string what)
    {
        var signs = new sbyte[w.Count];
        for (int i = 0; i < signs.Length; i++)
        {
            signs[i] = w.Values[i] switch
            {
                1 => 1,
                -1 => -1,
                var v => throw new BnnDataException($"{what} are not all ±1 (value {v} at index {i}); the layer is not binary"),
            };
        }
        return signs;
    }

    private Value Flatten(NodeProto node)
    {
        if (AttributeInt(node, "axis", 1) != 1)
        {
            throw new BnnDataException("only Flatten with axis 1 is in the profile");
        }
        return Input(node, 0) switch
        {
            BinaryValue { Pad: 0 } b => b with { Flat = true },
            _ => throw new BnnDataException("Flatten must act on binary activations"),
        };
    }

    private Value Reshape(NodeProto node)
    {
        if (Input(node, 0) is not BinaryValue { Pad: 0 } b)
        {
            throw new BnnDataException("Reshape must act on binary activations");
        }
        var target = ShapeOf(node.Input.Count > 1 ? node.Input[1] : throw new BnnDataException("the target shape is missing"));
        bool flat = target.Length == 2 && (target[0] is BatchMarker or 0 || target[0] == -1 && target[1] != -1)
            && (target[1] == -1 || target[1] == b.Features);
        if (!flat)
        {
            throw new BnnDataException($"only a reshape to [batch, {b.Features}] is in the profile, not [{string.Join(",", target)}]");
        }
        return b with { Flat = true };
    }

    private OutputLayer FinishOutput(AccumulatorValue scores)
    {
        if (scores.Layer.Pool > 0)
        {
            throw new BnnDataException("the output layer cannot be pooled");
        }
        // Class scores may be scaled and shifted only alike for all classes, by a positive factor: then the argmax is
        // that of the integer dot products, which is what our engine reports.
        var chain = scores.Chain;
        var (s0, o0) = chain.Composite(0);
        for (int j = 0; j < chain.Channels; j++)
        {
            var (s, o) = chain.Composite(j);
            if (s != s0 || o != o0 || s <= 0)
            {
                throw new BnnDataException(
                    $"node '{scores.Layer.Node}': the steps after the last layer scale or shift class {j} differently from class 0 (or negatively), which changes the argmax; only a common positive scale and offset are in the profile");
            }
        }
        var output = (OutputLayer)scores.Layer.Build(null);
        return new OutputLayer(output.InFeatures, output.Classes, output.Weights, (float)s0);
    }
}
