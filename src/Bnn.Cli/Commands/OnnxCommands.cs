using System.CommandLine;
using System.Globalization;
using Bnn.Engine;
using Bnn.Model;
using Bnn.Onnx;

namespace Bnn.Cli;

/// <summary>`bnn import`, `bnn export` and `bnn check`: ONNX in, ONNX out, and agreement with ONNX Runtime.</summary>
internal static class OnnxCommands
{
    public static Command Import(CliIo io)
    {
        var onnx = new Argument<string>("onnx") { Description = "ONNX model in the BNN profile (docs/onnx-profile.md)" };
        var output = new Option<string>("--out") { Description = "model file to write (.bnn)", Required = true };
        var command = new Command("import", "Import an ONNX BNN into our model file, folding batch norm and preprocessing exactly") { onnx, output };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var model = OnnxImporter.Import(parse.GetValue(onnx)!);
            ModelFile.Save(model, parse.GetValue(output)!);
            io.Out.WriteLine($"imported {model.Layers.Count} layers ({model.ConvLayers.Count()} conv) from {parse.GetValue(onnx)} into {parse.GetValue(output)}");
            return BnnApp.Ok;
        }));
        return command;
    }

    public static Command Export(CliIo io)
    {
        var model = CommonOptions.Model();
        var output = new Option<string>("--out") { Description = "ONNX file to write", Required = true };
        var command = new Command("export", "Export a model as ONNX (opset 13, float32 pixels 0..255 in, integer-valued scores out)") { model, output };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var m = CommonOptions.LoadModel(parse.GetValue(model)!);
            OnnxExporter.Save(m, parse.GetValue(output)!);
            io.Out.WriteLine($"wrote {parse.GetValue(output)} ({new FileInfo(parse.GetValue(output)!).Length:N0} bytes)");
            return BnnApp.Ok;
        }));
        return command;
    }

    public static Command Check(CliIo io)
    {
        var model = CommonOptions.Model();
        var onnx = new Option<string>("--onnx") { Description = "ONNX file to run in ONNX Runtime", Required = true };
        var selection = new CommonOptions.ImageSelection();
        var threads = CommonOptions.Threads();
        var json = CommonOptions.Json();
        var command = new Command("check", "Compare our engine's predictions with ONNX Runtime's on a dataset; exit 2 on any difference") { model, onnx };
        selection.AddTo(command);
        command.Add(threads);
        command.Add(json);
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            int t = parse.GetValue(threads);
            CommonOptions.CheckThreads(t);
            var m = CommonOptions.LoadModel(parse.GetValue(model)!);
            var images = selection.Load(parse);
            var result = Compare(m, File.ReadAllBytes(parse.GetValue(onnx)!), images, t);
            var inv = CultureInfo.InvariantCulture;
            io.Out.WriteLine(string.Create(inv,
                $"{result.Agree}/{images.Count} predictions agree ({(double)result.Agree / images.Count:P2}); accuracy ours {result.OurAccuracy:P2}, ONNX Runtime {result.RuntimeAccuracy:P2}"));
            io.Out.WriteLine(result.ScoresIdentical is { } same
                ? $"scores: {(same ? "identical" : "different")} (ONNX Runtime {OnnxRuntimeEngine.RuntimeVersion} gives integer scores)"
                : $"scores: not integers in ONNX Runtime {OnnxRuntimeEngine.RuntimeVersion}; predictions compared");
            foreach (int i in result.Differences.Take(10))
            {
                io.Out.WriteLine($"  image {i}: ours {result.Ours[i]}, ONNX Runtime {result.Runtime[i]}");
            }
            if (parse.GetValue(json) is string jsonPath)
            {
                CommonOptions.WriteJson(jsonPath, w =>
                {
                    w.WriteStartObject();
                    w.WriteString("model", parse.GetValue(model));
                    w.WriteString("onnx", parse.GetValue(onnx));
                    w.WriteString("onnxruntime", OnnxRuntimeEngine.RuntimeVersion);
                    w.WriteNumber("images", images.Count);
                    w.WriteNumber("agree", result.Agree);
                    w.WriteNumber("accuracy_ours", result.OurAccuracy);
                    w.WriteNumber("accuracy_onnxruntime", result.RuntimeAccuracy);
                    if (result.ScoresIdentical is { } same)
                    {
                        w.WriteBoolean("scores_identical", same);
                    }
                    w.WriteStartArray("differences");
                    foreach (int i in result.Differences)
                    {
                        w.WriteNumberValue(i);
                    }
                    w.WriteEndArray();
                    w.WriteEndObject();
                });
            }
            if (result.Differences.Count > 0)
            {
                io.Err.WriteLine($"error: {result.Differences.Count} of {images.Count} predictions differ");
                return BnnApp.DataError;
            }
            return BnnApp.Ok;
        }));
        return command;
    }

    internal sealed record Agreement(int[] Ours, int[] Runtime, IReadOnlyList<int> Differences, bool? ScoresIdentical, double OurAccuracy, double RuntimeAccuracy)
    {
        public int Agree => Ours.Length - Differences.Count;
    }

    /// <summary>Our fast engine against ONNX Runtime on the same images.</summary>
    internal static Agreement Compare(BnnModel model, byte[] onnx, Data.ImageSet images, int threads)
    {
        var (scores, ours) = new PackedEngine(model).Run(images, threads);
        using var runtime = new OnnxRuntimeEngine(model, onnx);
        var floats = runtime.ScoreFloat(images, 0, images.Count, threads);
        var theirs = OnnxRuntimeEngine.Predictions(floats, model.Classes);
        var differences = Enumerable.Range(0, ours.Length).Where(i => ours[i] != theirs[i]).ToList();
        bool? identical = floats.All(v => MathF.Round(v) == v)
            ? Enumerable.Range(0, floats.Length).All(i => (int)floats[i] == scores[i])
            : null;
        return new Agreement(ours, theirs, differences, identical, EngineExtensions.Accuracy(ours, images), EngineExtensions.Accuracy(theirs, images));
    }
}
