using System.CommandLine;
using System.Globalization;
using Bnn.Data;
using Bnn.Model;
using Bnn.Training;
using Spectre.Console;

namespace Bnn.Cli;

internal static class TrainCommand
{
    public static Command Create(CliIo io)
    {
        var arch = new Option<string>("--arch") { Description = "architecture", Required = true }.AcceptOnlyFromAmong([.. Architectures.Names]);
        var width = new Option<double>("--width") { Description = "channel-count multiplier", DefaultValueFactory = _ => 1.0 };
        var dataset = new Option<string>("--dataset") { Description = "dataset", Required = true }.AcceptOnlyFromAmong([.. Datasets.Names]);
        var data = new Option<string>("--data") { Description = "directory with the dataset files", Required = true };
        var epochs = new Option<int>("--epochs") { Description = "total epochs (the learning-rate schedule spans them)", Required = true };
        var output = new Option<string>("--out") { Description = "model file to write; checkpoints and the CSV log go beside it", Required = true };
        var resume = new Option<string?>("--resume") { Description = "continue from this checkpoint (.ckpt) or pack (`bnn checkpoint-pack`)" };
        var seed = new Option<int>("--seed") { Description = "random seed", DefaultValueFactory = _ => 1 };
        var threads = new Option<int>("--threads") { Description = "libtorch threads (0: its default)" };
        var batch = new Option<int>("--batch") { Description = "mini-batch size", DefaultValueFactory = _ => 100 };
        var lr = new Option<double>("--lr") { Description = "initial Adam learning rate (cosine-annealed)", DefaultValueFactory = _ => 2e-3 };
        var limit = new Option<int?>("--limit") { Description = "use only the first N training records (smoke runs)" };
        var maxBatches = new Option<int?>("--max-batches") { Description = "stop each epoch after N batches (smoke runs)" };
        var channelsLast = new Option<bool?>("--channels-last") { Description = "run convs channels-last (default: the resumed run's, else on; it measured 1.2-1.26× faster for both architectures)" };
        var bf16 = new Option<bool?>("--bf16-convs") { Description = "multiply convs after the first, and run a --teacher, in bfloat16 while training (exact ±1 products; a --float twin's in mixed precision; float32 weights and evaluation; default: the resumed run's choice, else on, and either only where the CPU has bfloat16 dot products; a resume on a CPU without them runs in float32 and keeps the choice)" };
        var keepEpochs = new Option<bool>("--keep-epochs") { Description = "also keep each epoch's weights as M.epochNNN.ckpt (for `bnn average`)" };
        var isFloat = new Option<bool>("--float") { Description = "train the architecture's float twin (real weights, ReLU) as a distillation teacher; writes checkpoints, no model" };
        var teacher = new Option<string[]>("--teacher") { Description = "distill from this float network's checkpoint (from `bnn train --float`; any architecture trained on the same dataset, e.g. airbench); repeat it to distill from the ensemble's mean prediction; with --resume, replaces the run's teachers" };
        var distillWeight = new Option<double>("--distill-weight") { Description = "α: the teacher's share of the loss", DefaultValueFactory = _ => 0.5 };
        var distillTemperature = new Option<double>("--distill-temperature") { Description = "T: the softmax temperature of the teacher's term", DefaultValueFactory = _ => 4.0 };
        var augment = new Option<string?>("--augment") { Description = "training augmentation: crop-flip, flip or none (default: the resumed run's, else crop-flip for cifar10, none for svhn)" }
            .AcceptOnlyFromAmong(AugmentationNames.All.Keys.ToArray());
        var restartLr = new Option<double?>("--restart-lr") { Description = "with --resume: start a new cosine cycle at this learning rate, annealed to 0 by --epochs" };
        var weightDecay = new Option<double?>("--weight-decay") { Description = "decoupled weight decay λ (AdamW: weights scaled by 1 − lr·λ after each step; e.g. 0.1 for a --float teacher); default: the resumed run's, else 0" };
        var poolBeforeNorm = new Option<bool?>("--pool-before-norm") { Description = "pool each conv's sums before batch norm and the sign, as BinaryNet does, rather than the signs (the exported model is alike; default: the resumed run's order, else after the sign; resuming a run of the other order converts it exactly)" };
        var command = new Command("train", "Train a BNN with TorchSharp and write a bit-packed model file")
        {
            arch, width, dataset, data, epochs, output, resume, seed, threads, batch, lr, limit, maxBatches, channelsLast, bf16, keepEpochs, isFloat, teacher, distillWeight, distillTemperature, augment, restartLr, weightDecay, poolBeforeNorm,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var options = new TrainOptions
            {
                Arch = parse.GetValue(arch)!,
                Width = parse.GetValue(width),
                Dataset = parse.GetValue(dataset)!,
                DataDir = parse.GetValue(data)!,
                Epochs = parse.GetValue(epochs),
                Out = parse.GetValue(output)!,
                Resume = parse.GetValue(resume),
                Seed = parse.GetValue(seed),
                Threads = parse.GetValue(threads),
                BatchSize = parse.GetValue(batch),
                LearningRate = parse.GetValue(lr),
                TrainLimit = parse.GetValue(limit),
                MaxBatchesPerEpoch = parse.GetValue(maxBatches),
                ChannelsLast = parse.GetValue(channelsLast),
                Bf16BinaryConvs = parse.GetValue(bf16),
                KeepEpochCheckpoints = parse.GetValue(keepEpochs),
                Float = parse.GetValue(isFloat),
                Teachers = parse.GetValue(teacher) ?? [],
                DistillWeight = parse.GetValue(distillWeight),
                DistillTemperature = parse.GetValue(distillTemperature),
                Augmentation = parse.GetValue(augment) is string name ? AugmentationNames.All[name] : null,
                RestartLearningRate = parse.GetValue(restartLr),
                WeightDecay = parse.GetValue(weightDecay),
                PoolBeforeNorm = parse.GetValue(poolBeforeNorm),
            };
            if (options.Epochs < 0 || options.BatchSize <= 0 || !(options.Width > 0))
            {
                throw new UsageException("--epochs must be ≥ 0, --batch > 0 and --width > 0");
            }
            if (options.Resume is not null && !File.Exists(options.Resume))
            {
                throw new UsageException($"--resume: checkpoint {options.Resume} not found");
            }
            if (options.Teachers.FirstOrDefault(t => !File.Exists(t)) is string missing)
            {
                throw new UsageException($"--teacher: checkpoint {missing} not found");
            }
            if (options.Teachers.Count != options.Teachers.Select(Path.GetFullPath).Distinct().Count())
            {
                throw new UsageException("--teacher: the same checkpoint is named twice (an ensemble's members must differ)");
            }
            if (options.Float && options.Teachers.Count > 0)
            {
                throw new UsageException("--float trains a teacher; it cannot take --teacher");
            }
            if (!(options.DistillWeight is >= 0 and <= 1) || !(options.DistillTemperature > 0))
            {
                throw new UsageException("--distill-weight must be in [0, 1] and --distill-temperature > 0");
            }
            if (options.RestartLearningRate is double restart && (options.Resume is null || !(restart > 0)))
            {
                throw new UsageException("--restart-lr needs --resume and a learning rate > 0");
            }
            if (options.WeightDecay is double decay && !(decay >= 0 && double.IsFinite(decay)))
            {
                throw new UsageException("--weight-decay must be ≥ 0");
            }
            var result = RunWithProgress(io, options);
            var best = result.History.FirstOrDefault(h => h.Epoch == result.BestEpoch);
            io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"trained {result.History.Count} epochs; best validation accuracy {best?.ValidationAccuracy:P2} at epoch {result.BestEpoch}"));
            io.Out.WriteLine($"checkpoint: {result.CheckpointPath}");
            io.Out.WriteLine($"log: {result.LogPath}");
            return BnnApp.Ok;
        }));
        return command;
    }

    /// <summary>
    /// The line a non-interactive run logs at the end of each epoch and, in epochs of 10 batches or more, at each tenth
    /// of it (an epoch of BinaryNet-VGG took 35-43 minutes on a CPU without bfloat16). The ETA is in whole hours,
    /// not days: a long run's remaining time passes 24 hours, and a TimeSpan's <c>hh</c> would silently drop the days.
    /// </summary>
    internal static string? LogLine(TrainProgress p)
    {
        bool last = p.Batch == p.Batches;
        if (!last && (p.Batches < 10 || p.Batch * 10 / p.Batches == (p.Batch - 1) * 10 / p.Batches))
        {
            return null;
        }
        var where = last ? "" : string.Create(CultureInfo.InvariantCulture, $", batch {p.Batch}/{p.Batches}");
        return string.Create(CultureInfo.InvariantCulture,
            $"epoch {p.Epoch}/{p.Epochs}{where}: loss {p.Loss:F4} train acc {p.Accuracy:P2} eta {(long)p.Eta.TotalHours:00}:{p.Eta.Minutes:00}:{p.Eta.Seconds:00}");
    }

    /// <summary>The log's first lines: the build that runs it, then the run's setup.</summary>
    private static string Opening(TrainSetup setup) => $"bnn {BnnApp.Version}\n{setup.Describe()}";

    private static TrainResult RunWithProgress(CliIo io, TrainOptions options)
    {
        if (!io.Interactive)
        {
            var lines = new ActionProgress<TrainProgress>(p =>
            {
                if (LogLine(p) is string line)
                {
                    io.Out.WriteLine(line);
                }
            });
            return Trainer.Train(options, lines, started: setup => io.Out.WriteLine(Opening(setup)));
        }
        TrainResult? result = null;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: 1.0);
                result = Trainer.Train(options, new ActionProgress<TrainProgress>(p =>
                {
                    task.Description = string.Create(CultureInfo.InvariantCulture, $"epoch {p.Epoch}/{p.Epochs} loss {p.Loss:F3} acc {p.Accuracy:P1}");
                    task.Value = ((p.Epoch - 1) + ((double)p.Batch / p.Batches)) / p.Epochs;
                }), started: setup => AnsiConsole.WriteLine(Opening(setup)));
            });
        return result!;
    }
}

/// <summary>Reports on the calling thread (System.Progress would post to the thread pool and reorder lines).</summary>
/// <typeparam name="T">The progress value.</typeparam>
public sealed class ActionProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
