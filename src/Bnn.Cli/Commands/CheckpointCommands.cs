using System.CommandLine;
using System.Globalization;
using Bnn.Engine;
using Bnn.Model;
using Bnn.Training;
using TorchSharp;

namespace Bnn.Cli;

/// <summary>Commands on training checkpoints: describe one, export it to a model file, pack it to commit, average a run's epochs, and check the engine against TorchSharp.</summary>
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

    public static Command Info(CliIo io)
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "training checkpoint (.ckpt)", Required = true };
        var last = new Option<int>("--last") { Description = "how many of the last epochs to list", DefaultValueFactory = _ => 5 };
        var plot = new Option<string?>("--plot") { Description = "also draw the run's accuracy and learning-rate curves into this PNG" };
        var command = new Command("checkpoint-info", "Describe a training checkpoint from its header: the run, its schedule, its best epoch, whether it resumes, its last epochs")
        {
            checkpoint, last, plot,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var path = parse.GetValue(checkpoint)!;
            if (!File.Exists(path))
            {
                throw new UsageException($"--checkpoint: {path} not found");
            }
            if (parse.GetValue(last) < 0)
            {
                throw new UsageException("--last must be ≥ 0");
            }
            var plotPath = parse.GetValue(plot);
            if (plotPath is not null && Path.GetFullPath(plotPath) == Path.GetFullPath(path))
            {
                throw new UsageException($"--plot {plotPath} would overwrite the checkpoint");
            }
            var report = CheckpointReport.Read(path);
            if (plotPath is not null && report.History.Count == 0)
            {
                throw new UsageException($"--plot: {path} has no completed epoch to draw");
            }
            io.Out.Write(report.Describe(parse.GetValue(last)));
            if (plotPath is not null)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(plotPath))!);
                Plots.TrainingCurves(report.History, report.BestEpoch, plotPath);
                io.Out.WriteLine($"wrote {plotPath}");
            }
            return BnnApp.Ok;
        }));
        return command;
    }

    public static Command Pack(CliIo io)
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "a run's latest checkpoint (.ckpt); its best epoch's companion (.best.ckpt) goes along", Required = true };
        var output = new Option<string>("--out") { Description = "pack to write, small enough to commit (e.g. models/checkpoints/RUN.pack)", Required = true };
        var command = new Command("checkpoint-pack",
            "Pack a run's latest checkpoint and its best epoch into one small file that `bnn train --resume` continues from (latent weights in 16-bit fixed point, Adam's second moments in 8 bits)")
        {
            checkpoint, output,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var path = parse.GetValue(checkpoint)!;
            if (!File.Exists(path))
            {
                throw new UsageException($"--checkpoint: {path} not found");
            }
            var result = CheckpointPack.Pack(path, parse.GetValue(output)!);
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"wrote {result.PackPath}: epoch {result.CompletedEpochs}, {(result.BestEpoch > 0 ? $"best epoch {result.BestEpoch}" : "no best epoch")}; " +
                $"{result.PackBytes / 1e6:F1} MB from {result.InputBytes / 1e6:F1} MB"));
            return BnnApp.Ok;
        }));
        return command;
    }

    public static Command Average(CliIo io)
    {
        var checkpoints = new Argument<string[]>("checkpoints") { Description = "checkpoints of one run, e.g. those `bnn train --keep-epochs` keeps", Arity = ArgumentArity.OneOrMore };
        var data = CommonOptions.Data();
        var output = new Option<string>("--out") { Description = "averaged checkpoint to write (.ckpt)", Required = true };
        var model = new Option<string?>("--model") { Description = "also export the averaged checkpoint as this model file" };
        var recalibrate = new Option<int>("--recalibrate") { Description = "re-estimate batch norm on this many (augmented) training images; 0 keeps the averaged statistics", DefaultValueFactory = _ => 20000 };
        var seed = new Option<int>("--seed") { Description = "random seed of the recalibration images and their augmentation", DefaultValueFactory = _ => 1 };
        var threads = new Option<int>("--threads") { Description = "libtorch threads (0: its default)" };
        var command = new Command("average", "Average the weights of a run's late epochs (SWA), re-estimate batch norm, and report validation accuracy")
        {
            checkpoints, data, output, model, recalibrate, seed, threads,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var paths = parse.GetValue(checkpoints)!;
            if (paths.FirstOrDefault(p => !File.Exists(p)) is string missing)
            {
                throw new UsageException($"checkpoint {missing} not found");
            }
            if (parse.GetValue(recalibrate) < 0)
            {
                throw new UsageException("--recalibrate must be ≥ 0");
            }
            var outPath = parse.GetValue(output)!;
            if (paths.Any(p => Path.GetFullPath(p) == Path.GetFullPath(outPath)))
            {
                throw new UsageException($"--out {outPath} would overwrite one of the checkpoints being averaged");
            }
            if (parse.GetValue(threads) > 0)
            {
                torch.set_num_threads(parse.GetValue(threads));
            }
            var result = WeightAveraging.Average(paths, parse.GetValue(data)!, outPath, parse.GetValue(recalibrate), parse.GetValue(seed));
            foreach (var (epoch, accuracy) in result.Inputs)
            {
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"epoch {epoch}: validation {accuracy:P2}"));
            }
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"average of {paths.Length}: validation {result.AveragedValidationAccuracy:P2}"));
            if (result.RecalibratedValidationAccuracy is double recalibrated)
            {
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"average of {paths.Length}, batch norm re-estimated on {result.RecalibrationImages} training images: validation {recalibrated:P2}"));
            }
            io.Out.WriteLine($"wrote {outPath}");
            if (parse.GetValue(model) is string modelPath)
            {
                ModelFile.Save(Exporter.FromCheckpoint(outPath), modelPath);
                io.Out.WriteLine($"wrote {modelPath}");
            }
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
