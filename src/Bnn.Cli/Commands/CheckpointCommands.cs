using System.CommandLine;
using System.Globalization;
using Bnn.Engine;
using Bnn.Model;
using Bnn.Training;
using TorchSharp;

namespace Bnn.Cli;

/// <summary>Commands on training checkpoints: export to a model file, and check the engine against TorchSharp.</summary>
internal static class CheckpointCommands
{
    public static Command Export(CliIo io)
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "training checkpoint (.ckpt)", Required = true };
        var output = new Option<string>("--out") { Description = "model file to write", Required = true };
        var command = new Command("export-checkpoint", "Write the model file of a training checkpoint (batch norm kept for folding at load)") { checkpoint, output };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var path = parse.GetValue(checkpoint)!;
            if (!File.Exists(path))
            {
                throw new UsageException($"--checkpoint: {path} not found");
            }
            ModelFile.Save(Exporter.FromCheckpoint(path), parse.GetValue(output)!);
            io.Out.WriteLine($"wrote {parse.GetValue(output)}");
            return BnnApp.Ok;
        }));
        return command;
    }

    public static Command Fidelity(CliIo io)
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "training checkpoint (.ckpt) the model was exported from", Required = true };
        var model = CommonOptions.Model();
        var selection = new CommonOptions.ImageSelection();
        var threads = CommonOptions.Threads();
        var json = CommonOptions.Json();
        var command = new Command("fidelity", "Compare the engine's predictions with TorchSharp's eval-mode forward (float32 and float64) of the same network")
        {
            checkpoint, model,
        };
        selection.AddTo(command);
        command.Add(threads);
        command.Add(json);
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var images = selection.Load(parse);
            var m = CommonOptions.LoadModel(parse.GetValue(model)!);
            torch.set_num_threads(Math.Max(1, parse.GetValue(threads)));
            using var net = Exporter.LoadNetwork(parse.GetValue(checkpoint)!);
            var engine = new PackedEngine(m).Run(images, parse.GetValue(threads)).Predictions;
            var t32 = Trainer.Predict(net, images, torch.ScalarType.Float32);
            var t64 = Trainer.Predict(net, images, torch.ScalarType.Float64);
            int agree32 = engine.Where((p, i) => p == t32[i]).Count();
            int agree64 = engine.Where((p, i) => p == t64[i]).Count();
            int correct = EngineExtensions.CountCorrect(engine, images);
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{images.Count} images: engine accuracy {(double)correct / images.Count:P2}; agreement with TorchSharp float32 {agree32}/{images.Count}, float64 {agree64}/{images.Count}"));
            if (parse.GetValue(json) is string jsonPath)
            {
                CommonOptions.WriteJson(jsonPath, w =>
                {
                    w.WriteStartObject();
                    w.WriteNumber("images", images.Count);
                    w.WriteNumber("engine_correct", correct);
                    w.WriteNumber("agree_float32", agree32);
                    w.WriteNumber("agree_float64", agree64);
                    w.WriteEndObject();
                });
            }
            return agree32 == images.Count && agree64 == images.Count ? BnnApp.Ok : BnnApp.DataError;
        }));
        return command;
    }
}
