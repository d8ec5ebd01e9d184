using System.CommandLine;
using System.Globalization;
using Bnn.Cost;
using Bnn.Model;

namespace Bnn.Cli;

internal static class InfoCommand
{
    public static Command Create(CliIo io)
    {
        var model = CommonOptions.Model();
        var json = CommonOptions.Json();
        var command = new Command("info", "Show a model's architecture, per-layer shapes, parameter bits and tap ops per image") { model, json };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var path = parse.GetValue(model)!;
            var m = CommonOptions.LoadModel(path);
            io.Out.Write(Render(m));
            if (parse.GetValue(json) is string jsonPath)
            {
                CommonOptions.WriteJson(jsonPath, w =>
                {
                    w.WriteStartObject();
                    w.WriteString("model", path);
                    w.WriteStartObject("input");
                    w.WriteNumber("channels", m.Input.Channels);
                    w.WriteNumber("height", m.Input.Height);
                    w.WriteNumber("width", m.Input.Width);
                    w.WriteEndObject();
                    w.WriteStartArray("layers");
                    for (int i = 0; i < m.Layers.Count; i++)
                    {
                        w.WriteStartObject();
                        w.WriteNumber("index", i);
                        w.WriteString("type", m.Layers[i].Kind);
                        w.WriteString("input_shape", m.InputShapes[i].ToString());
                        w.WriteString("output_shape", m.OutputShapes[i].ToString());
                        w.WriteNumber("parameter_bits", CostModel.ParameterBits(m.Layers[i]));
                        w.WriteNumber("tap_ops", CostModel.LayerTapOps(m, i));
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                    w.WriteNumber("total_parameter_bits", m.Layers.Sum(CostModel.ParameterBits));
                    w.WriteNumber("total_tap_ops", Enumerable.Range(0, m.Layers.Count).Sum(i => CostModel.LayerTapOps(m, i)));
                    w.WriteEndObject();
                });
            }
            return BnnApp.Ok;
        }));
        return command;
    }

    /// <summary>The human-readable table (snapshot-tested).</summary>
    public static string Render(BnnModel m)
    {
        var sb = new System.Text.StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine(inv, $"input {m.Input} (pixel codes 2p-255), {m.Classes} classes");
        sb.AppendLine(inv, $"{"#",-3} {"layer",-28} {"input",-12} {"output",-12} {"param bits",12} {"tap ops",14}");
        for (int i = 0; i < m.Layers.Count; i++)
        {
            string desc = m.Layers[i] switch
            {
                ConvLayer c => $"{(c.IsInputLayer ? "input-conv" : "conv")} {c.KernelH}x{c.KernelW}/{c.Stride} p{c.Padding}{(c.Padding > 0 ? $"({c.PadValue:+0;-0;0})" : "")}",
                MaxPoolLayer p => $"maxpool {p.Size}x{p.Size}",
                DenseLayer => "dense",
                OutputLayer => "output",
                _ => m.Layers[i].Kind,
            };
            sb.AppendLine(inv, $"{i,-3} {desc,-28} {m.InputShapes[i],-12} {m.OutputShapes[i],-12} {CostModel.ParameterBits(m.Layers[i]),12:N0} {CostModel.LayerTapOps(m, i),14:N0}");
        }
        sb.AppendLine(inv, $"total: {m.Layers.Sum(CostModel.ParameterBits):N0} parameter bits ({m.Layers.Sum(CostModel.ParameterBits) / 8.0 / 1024:F1} KiB), {Enumerable.Range(0, m.Layers.Count).Sum(i => CostModel.LayerTapOps(m, i)):N0} tap ops per image");
        return sb.ToString();
    }
}
