using System.Text;
using System.Text.Json;
using Bnn.Sharing;

namespace Bnn.Model;

/// <summary>The architecture JSON inside a model file's metadata, and its tensor names (docs/model-format.md).</summary>
internal static class ArchitectureJson
{
    public const string PixelEncoding = "pixel_code_2p_minus_255";

    // Imported models carry their own per-channel levels in the I32 tensor input.levels [C, 256].
    public const string LevelsEncoding = "pixel_levels";

    public static string Write(BnnModel model, List<SafeTensors.Entry> tensors)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteStartObject("input");
            w.WriteNumber("channels", model.Input.Channels);
            w.WriteNumber("height", model.Input.Height);
            w.WriteNumber("width", model.Input.Width);
            var levels = ((ConvLayer)model.Layers[0]).PixelLevels;
            w.WriteString("encoding", levels is null ? PixelEncoding : LevelsEncoding);
            if (levels is not null)
            {
                tensors.Add(SafeTensors.I32("input.levels", levels, model.Input.Channels, 256));
            }
            w.WriteEndObject();
            w.WriteStartArray("layers");
            for (int i = 0; i < model.Layers.Count; i++)
            {
                string prefix = $"layers.{i}.";
                w.WriteStartObject();
                w.WriteString("type", model.Layers[i].Kind);
                switch (model.Layers[i])
                {
                    case ConvLayer c:
                        w.WriteBoolean("input_layer", c.IsInputLayer);
                        w.WriteNumber("out_channels", c.OutChannels);
                        w.WriteNumber("in_channels", c.InChannels);
                        w.WriteStartArray("kernel");
                        w.WriteNumberValue(c.KernelH);
                        w.WriteNumberValue(c.KernelW);
                        w.WriteEndArray();
                        w.WriteNumber("stride", c.Stride);
                        w.WriteNumber("padding", c.Padding);
                        w.WriteNumber("pad_value", c.PadValue);
                        w.WriteNumber("bn_epsilon", c.Norm.Epsilon);
                        tensors.Add(SafeTensors.PackSigns(prefix + "weight", c.Weights, c.OutChannels));
                        AddNorm(tensors, prefix, c.Norm);
                        if (model.Plans.TryGetValue(i, out var plan))
                        {
                            WritePlan(w, tensors, prefix, plan);
                        }
                        break;
                    case MaxPoolLayer p:
                        w.WriteNumber("size", p.Size);
                        break;
                    case DenseLayer d:
                        w.WriteNumber("in_features", d.InFeatures);
                        w.WriteNumber("out_features", d.OutFeatures);
                        w.WriteNumber("bn_epsilon", d.Norm.Epsilon);
                        tensors.Add(SafeTensors.PackSigns(prefix + "weight", d.Weights, d.OutFeatures));
                        AddNorm(tensors, prefix, d.Norm);
                        break;
                    case OutputLayer o:
                        w.WriteNumber("in_features", o.InFeatures);
                        w.WriteNumber("classes", o.Classes);
                        w.WriteNumber("scale", o.Scale);
                        tensors.Add(SafeTensors.PackSigns(prefix + "weight", o.Weights, o.Classes));
                        break;
                    default:
                        throw new InvalidOperationException($"cannot serialize layer {model.Layers[i].Kind}");
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    public static BnnModel Build(JsonElement root, SafeTensors.File file, string source)
    {
        var input = root.GetProperty("input");
        var encoding = input.GetProperty("encoding").GetString();
        if (encoding is not (PixelEncoding or LevelsEncoding))
        {
            throw new Data.BnnDataException($"{source}: unsupported input encoding '{encoding}'");
        }
        var shape = new Shape(input.GetProperty("channels").GetInt32(), input.GetProperty("height").GetInt32(), input.GetProperty("width").GetInt32());
        if (shape.Channels is <= 0 or > 4096)
        {
            throw new Data.BnnDataException($"{source}: input channels {shape.Channels} out of range");
        }
        int[]? levels = encoding == LevelsEncoding ? SafeTensors.ToI32(file.Get("input.levels", "I32", shape.Channels, 256)) : null;
        var layers = new List<Layer>();
        var plans = new Dictionary<int, LayerPlan>();
        int i = 0;
        foreach (var l in root.GetProperty("layers").EnumerateArray())
        {
            string prefix = $"layers.{i}.";
            var type = l.GetProperty("type").GetString();
            if (type == "conv" && l.TryGetProperty("plan", out var planJson))
            {
                plans[i] = ReadPlan(planJson, l, file, prefix, source);
            }
            Layer layer = type switch
            {
                "conv" => Conv(l, file, prefix, source, i == 0 ? levels : null),
                "maxpool" => new MaxPoolLayer(l.GetProperty("size").GetInt32()),
                "dense" => Dense(l, file, prefix, source),
                "output" => Output(l, file, prefix, source),
                _ => throw new Data.BnnDataException($"{source}: layer {i} has unknown type '{type}'"),
            };
            layers.Add(layer);
            i++;
        }
        return new BnnModel(shape, layers, source, plans);
    }

    // A plan is stored as two I32 tensors: plan.nodes [N, 3] = (channel, code, parent or -1) and plan.assign [K*C] =
    // node*2 + (1 if the filter is the node's complement). The loader checks it reproduces the weights exactly.
    private static void WritePlan(Utf8JsonWriter w, List<SafeTensors.Entry> tensors, string prefix, LayerPlan plan)
    {
        w.WriteStartObject("plan");
        w.WriteString("mode", plan.Mode);
        w.WriteNumber("nodes", plan.Nodes.Count);
        w.WriteEndObject();
        var nodes = plan.Nodes.SelectMany(n => new[] { n.Channel, n.Code, n.Parent }).ToArray();
        tensors.Add(SafeTensors.I32(prefix + "plan.nodes", nodes, plan.Nodes.Count, 3));
        var assign = plan.Assignment.Select((node, f) => (node * 2) + (plan.Signs[f] < 0 ? 1 : 0)).ToArray();
        tensors.Add(SafeTensors.I32(prefix + "plan.assign", assign, assign.Length));
    }

    private static LayerPlan ReadPlan(JsonElement planJson, JsonElement layer, SafeTensors.File file, string prefix, string source)
    {
        int count = planJson.GetProperty("nodes").GetInt32();
        if (count < 0 || count > (1 << 24))
        {
            throw new Data.BnnDataException($"{source}: {prefix}plan has an invalid node count");
        }
        var kernel = layer.GetProperty("kernel").EnumerateArray().Select(v => v.GetInt32()).ToArray();
        long filters = (long)layer.GetProperty("out_channels").GetInt32() * layer.GetProperty("in_channels").GetInt32();
        var raw = SafeTensors.ToI32(file.Get(prefix + "plan.nodes", "I32", count, 3));
        var nodes = Enumerable.Range(0, count).Select(j => new PlanNode(raw[j * 3], raw[(j * 3) + 1], raw[(j * 3) + 2])).ToArray();
        var assign = SafeTensors.ToI32(file.Get(prefix + "plan.assign", "I32", filters));
        return new LayerPlan(planJson.GetProperty("mode").GetString() ?? "", kernel[0] * kernel[1], nodes,
            assign.Select(a => a >> 1).ToArray(), assign.Select(a => (sbyte)((a & 1) == 1 ? -1 : 1)).ToArray());
    }

    private static ConvLayer Conv(JsonElement l, SafeTensors.File file, string prefix, string source, int[]? levels)
    {
        int k = Positive(l, "out_channels", source), c = Positive(l, "in_channels", source);
        var kernel = l.GetProperty("kernel").EnumerateArray().Select(v => v.GetInt32()).ToArray();
        if (kernel.Length != 2 || kernel[0] <= 0 || kernel[1] <= 0 || kernel[0] > 64 || kernel[1] > 64)
        {
            throw new Data.BnnDataException($"{source}: {prefix}kernel must be two sizes in 1..64");
        }
        int taps = checked(c * kernel[0] * kernel[1]);
        var weights = Signs(file, prefix + "weight", k, taps, source);
        return new ConvLayer(k, c, kernel[0], kernel[1], l.GetProperty("stride").GetInt32(), l.GetProperty("padding").GetInt32(),
            l.GetProperty("pad_value").GetInt32(), l.GetProperty("input_layer").GetBoolean(), weights, Norm(l, file, prefix, k), levels);
    }

    private static DenseLayer Dense(JsonElement l, SafeTensors.File file, string prefix, string source)
    {
        int inF = Positive(l, "in_features", source), outF = Positive(l, "out_features", source);
        return new DenseLayer(inF, outF, Signs(file, prefix + "weight", outF, inF, source), Norm(l, file, prefix, outF));
    }

    private static OutputLayer Output(JsonElement l, SafeTensors.File file, string prefix, string source)
    {
        int inF = Positive(l, "in_features", source), classes = Positive(l, "classes", source);
        return new OutputLayer(inF, classes, Signs(file, prefix + "weight", classes, inF, source), l.GetProperty("scale").GetSingle());
    }

    private static int Positive(JsonElement l, string name, string source)
    {
        int v = l.GetProperty(name).GetInt32();
        if (v <= 0 || v > (1 << 24))
        {
            throw new Data.BnnDataException($"{source}: {name} = {v} is out of range");
        }
        return v;
    }

    private static sbyte[] Signs(SafeTensors.File file, string name, int rows, int cols, string source)
    {
        var e = file.Get(name, "U8", rows, (cols + 7) / 8);
        return SafeTensors.UnpackSigns(e, rows, cols, source);
    }

    private static BatchNormParameters Norm(JsonElement l, SafeTensors.File file, string prefix, int n) => new(
        SafeTensors.ToF32(file.Get(prefix + "bn.gamma", "F32", n)),
        SafeTensors.ToF32(file.Get(prefix + "bn.beta", "F32", n)),
        SafeTensors.ToF32(file.Get(prefix + "bn.mean", "F32", n)),
        SafeTensors.ToF32(file.Get(prefix + "bn.var", "F32", n)),
        l.GetProperty("bn_epsilon").GetSingle());

    private static void AddNorm(List<SafeTensors.Entry> tensors, string prefix, BatchNormParameters bn)
    {
        tensors.Add(SafeTensors.F32(prefix + "bn.gamma", bn.Gamma));
        tensors.Add(SafeTensors.F32(prefix + "bn.beta", bn.Beta));
        tensors.Add(SafeTensors.F32(prefix + "bn.mean", bn.Mean));
        tensors.Add(SafeTensors.F32(prefix + "bn.var", bn.Variance));
    }
}
