using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Bnn.Engine;
using Bnn.Data;
using Bnn.Engine.Kernels;
using Bnn.Engine.Reference;
using Spectre.Console;

namespace Bnn.Cli;

internal static class EvalCommand
{
    public static IReadOnlyList<string> EngineNames { get; } = ["reference", "fast", "shared", "onnxruntime"];

    public static Command Create(CliIo io)
    {
        var model = CommonOptions.Model();
        var selection = new CommonOptions.ImageSelection();
        var engine = new Option<string>("--engine") { Description = "inference engine", DefaultValueFactory = _ => "fast" }.AcceptOnlyFromAmong([.. EngineNames]);
        var threads = CommonOptions.Threads();
        var json = CommonOptions.Json();
        var kernel = new Option<PopCountKernel>("--popcount") { Description = "fast engine: popcount kernel", DefaultValueFactory = _ => PopCountKernel.Auto };
        var command = new Command("eval", "Evaluate a model on a dataset: accuracy and images/s") { model };
        selection.AddTo(command);
        command.Add(engine);
        command.Add(threads);
        command.Add(json);
        command.Add(kernel);
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            int t = parse.GetValue(threads);
            CommonOptions.CheckThreads(t);
            var modelPath = parse.GetValue(model)!;
            var m = CommonOptions.LoadModel(modelPath);
            var images = selection.Load(parse);
            var k = parse.GetValue(kernel);
            if (!XorPopCount.Supported.Contains(k) && k != PopCountKernel.Auto)
            {
                throw new UsageException($"--popcount {k} is not supported on this machine (supported: {string.Join(", ", XorPopCount.Supported)})");
            }
            IEngine e = parse.GetValue(engine) == "fast" ? new PackedEngine(m, k) : CreateEngine(parse.GetValue(engine)!, m, modelPath);
            var clock = Stopwatch.StartNew();
            var predictions = RunWithProgress(io, e, images, t);
            double seconds = clock.Elapsed.TotalSeconds;
            int correct = EngineExtensions.CountCorrect(predictions, images);
            double accuracy = (double)correct / images.Count;
            double ips = images.Count / Math.Max(seconds, 1e-9);
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{images.Count} images, {correct} correct: accuracy {accuracy:P2}; {ips:F1} images/s ({e.Name} engine, {t} threads)"));
            foreach (var c in (e as PackedEngine)?.ConvChoices.Where(c => c.BitSliced) ?? [])
            {
                io.Err.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  layer {c.Layer}: bit-sliced conv (an image took {c.PackedMicroseconds:F1} µs with it packed, {c.BitSlicedMicroseconds:F1} µs bit-sliced)"));
            }
            foreach (var c in (e as SharedEngine)?.Choices ?? [])
            {
                // What the shared engine ran per layer, on stderr so that stdout stays the result line.
                io.Err.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  layer {c.Layer}: {c.Reason}{(double.IsNaN(c.DenseMicroseconds) ? "" : $" (dense {c.DenseMicroseconds:F1} µs, shared {c.SharedMicroseconds:F1} µs per image)")}"));
            }
            if (parse.GetValue(json) is string jsonPath)
            {
                CommonOptions.WriteJson(jsonPath, w =>
                {
                    w.WriteStartObject();
                    w.WriteString("model", modelPath);
                    w.WriteString("dataset", parse.GetValue(selection.Dataset));
                    w.WriteString("split", parse.GetValue(selection.File) ?? parse.GetValue(selection.Split));
                    w.WriteNumber("images", images.Count);
                    w.WriteNumber("correct", correct);
                    w.WriteNumber("accuracy", accuracy);
                    w.WriteNumber("images_per_second", ips);
                    w.WriteString("engine", e.Name);
                    w.WriteNumber("threads", t);
                    w.WriteStartArray("predictions");
                    foreach (var p in predictions)
                    {
                        w.WriteNumberValue(p);
                    }
                    w.WriteEndArray();
                    w.WriteEndObject();
                });
            }
            return BnnApp.Ok;
        }));
        return command;
    }

    /// <summary>Scores in chunks so that an interactive terminal can show a progress bar.</summary>
    private static int[] RunWithProgress(CliIo io, IEngine engine, ImageSet images, int threads)
    {
        if (!io.Interactive)
        {
            return engine.Run(images, threads).Predictions;
        }
        int classes = engine.Model.Classes;
        var scores = new int[images.Count * classes];
        int chunk = Math.Max(threads * 8, 64);
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask($"{engine.Name} engine", maxValue: images.Count);
                for (int start = 0; start < images.Count; start += chunk)
                {
                    int count = Math.Min(chunk, images.Count - start);
                    engine.Score(images, start, count, scores.AsSpan(start * classes, count * classes), threads);
                    task.Increment(count);
                }
            });
        return Enumerable.Range(0, images.Count).Select(i => EngineExtensions.ArgMax(scores.AsSpan(i * classes, classes))).ToArray();
    }

    /// <summary>An engine by name; onnxruntime runs the ONNX file itself, or the ONNX export of a .bnn model.</summary>
    public static IEngine CreateEngine(string name, Model.BnnModel model, string modelPath) => name switch
    {
        "reference" => new ReferenceEngine(model),
        "fast" => new PackedEngine(model),
        "shared" => new SharedEngine(model),
        "onnxruntime" => new Onnx.OnnxRuntimeEngine(model, CommonOptions.IsOnnx(modelPath) ? System.IO.File.ReadAllBytes(modelPath) : Onnx.OnnxExporter.ToBytes(model)),
        _ => throw new UsageException($"unknown engine '{name}' (expected one of: {string.Join(", ", EngineNames)})"),
    };
}
