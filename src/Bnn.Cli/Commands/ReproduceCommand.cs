using System.CommandLine;
using System.Globalization;
using System.Text;
using Bnn.Data;
using Bnn.Engine;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Cli;

/// <summary>
/// The main job: for each shipped model, analyze, share in all three modes, evaluate on the test split and the
/// lossless test images, and print the headline table beside the thesis's "about 60% within 1%".
/// </summary>
internal static class ReproduceCommand
{
    private const string LosslessTest = "lossless_test_0-999.bin.gz";

    public static Command Create(CliIo io)
    {
        var data = new Option<string>("--data") { Description = "CIFAR-10 directory (SVHN rows need --svhn-data)", Required = true };
        var svhn = new Option<string?>("--svhn-data") { Description = "SVHN directory with train_32x32.mat and test_32x32.mat" };
        var models = new Option<string>("--models") { Description = "directory of shipped models (<arch>-<dataset>.bnn)", DefaultValueFactory = _ => "models" };
        var only = new Option<string[]>("--only")
        {
            Description = "reproduce only these models, named as in --models without the extension (e.g. cnv-cifar10); default: all",
            AllowMultipleArgumentsPerToken = true,
        };
        var maxLoss = new Option<double>("--max-loss") { Description = "approximate: validation accuracy budget", DefaultValueFactory = _ => 0.01 };
        var maxRadius = new Option<int>("--max-radius") { Description = "approximate: largest merge radius tried (1 keeps the run short; radius 2 rarely fits a 1% budget)", DefaultValueFactory = _ => 1 };
        var steiner = new Option<bool>("--steiner") { Description = "also plan exact-similar with CP-SAT Steiner intermediates (adds a row)", DefaultValueFactory = _ => true };
        var finetune = new Option<int>("--finetune-epochs") { Description = "approximate: sharing-aware fine-tuning epochs (needs checkpoints/<model>.best.ckpt or .best.pack beside the models; 0: off)", DefaultValueFactory = _ => 0 };
        var finetuneLoss = new Option<double?>("--finetune-search-loss") { Description = "approximate with fine-tuning: validation budget of the radius search before fine-tuning (default: --max-loss)" };
        var limit = CommonOptions.Limit();
        var threads = CommonOptions.Threads();
        var output = new Option<string?>("--out") { Description = "directory for the shared models and reproduce.json" };
        var command = new Command("reproduce", "Analyze, share (exact, exact-similar, approximate) and evaluate the shipped models; print the headline table")
        {
            data, svhn, models, only, maxLoss, maxRadius, steiner, finetune, finetuneLoss, limit, threads, output,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            int t = parse.GetValue(threads);
            CommonOptions.CheckThreads(t);
            var dir = parse.GetValue(models)!;
            if (!Directory.Exists(dir))
            {
                throw new UsageException($"--models: directory {dir} not found");
            }
            var rows = new List<Row>();
            foreach (var path in SelectModels(dir, parse.GetValue(only) ?? []))
            {
                var name = Path.GetFileNameWithoutExtension(path);
                string dataset = name.EndsWith("-svhn", StringComparison.Ordinal) ? "svhn" : "cifar10";
                string? dataDir = dataset == "svhn" ? parse.GetValue(svhn) : parse.GetValue(data);
                if (dataDir is null)
                {
                    io.Err.WriteLine($"skipping {name}: no {dataset} data given");
                    continue;
                }
                var settings = new Settings(parse.GetValue(maxLoss), parse.GetValue(maxRadius), parse.GetValue(steiner), parse.GetValue(finetune),
                    parse.GetValue(finetuneLoss) ?? parse.GetValue(maxLoss), BestCheckpoint(dir, name));
                rows.Add(Reproduce(io, path, dataset, dataDir, settings, parse.GetValue(limit), t, parse.GetValue(output)));
            }
            if (rows.Count == 0)
            {
                throw new UsageException($"no models to reproduce in {dir}");
            }
            io.Out.Write(Render(rows, parse.GetValue(maxLoss)));
            return BnnApp.Ok;
        }));
        return command;
    }

    /// <summary>
    /// The models in <paramref name="dir"/>, in name order, or only the <paramref name="names"/> given. A name that
    /// is not there is refused before any work starts, naming those that are, so that a typo does not cost a run.
    /// </summary>
    private static IReadOnlyList<string> SelectModels(string dir, IReadOnlyCollection<string> names)
    {
        var all = Directory.GetFiles(dir, "*" + ModelFile.Extension).Order(StringComparer.Ordinal).ToList();
        if (names.Count == 0)
        {
            return all;
        }
        var available = all.Select(Path.GetFileNameWithoutExtension).ToList();
        var missing = names.Where(n => !available.Contains(n, StringComparer.Ordinal)).ToList();
        if (missing.Count > 0)
        {
            throw new UsageException($"--only: no model {string.Join(", ", missing)} in {dir} (there: {(available.Count == 0 ? "none" : string.Join(", ", available))})");
        }
        return all.Where(p => names.Contains(Path.GetFileNameWithoutExtension(p), StringComparer.Ordinal)).ToList();
    }

    /// <summary>
    /// A shipped model's best epoch: its checkpoint, or a pack of it (half the size; what a large model commits). The
    /// checkpoint is preferred when both exist, as it is the original.
    /// </summary>
    internal static string BestCheckpoint(string modelsDir, string name)
    {
        var checkpoint = Path.Combine(modelsDir, "checkpoints", name + ".best.ckpt");
        var pack = Path.Combine(modelsDir, "checkpoints", name + ".best.pack");
        return File.Exists(checkpoint) || !File.Exists(pack) ? checkpoint : pack;
    }

    private sealed record Settings(double MaxLoss, int MaxRadius, bool Steiner, int FinetuneEpochs, double FinetuneSearchLoss, string Checkpoint);

    private sealed record ModeResult(string Mode, double Conv2dReduction, double TapOpReduction, double TestAccuracy, double? LosslessAccuracy, int PredictionChanges);

    private sealed record Row(string Model, double TestAccuracy, double? LosslessAccuracy, int TestImages, IReadOnlyList<ModeResult> Modes, string Radii);

    private static Row Reproduce(CliIo io, string path, string dataset, string dataDir, Settings settings, int? limit, int threads, string? outDir)
    {
        var model = CommonOptions.LoadModel(path);
        var test = CommonOptions.LoadImages(dataset, dataDir, "test", null, limit);
        ImageSet? lossless = dataset == "cifar10" && File.Exists(Path.Combine(dataDir, LosslessTest)) ? Cifar10.LoadFile(Path.Combine(dataDir, LosslessTest)) : null;
        var (train, validation) = Datasets.HoldOut(Datasets.Load(dataset, dataDir, "train"));
        var name = Path.GetFileNameWithoutExtension(path);
        io.Err.WriteLine($"{name}: dense baseline on {test.Count} test images");
        var dense = new PackedEngine(model).Run(test, threads).Predictions;
        var denseLossless = lossless is null ? null : new PackedEngine(model).Run(lossless, threads).Predictions;
        var report = SharingReport.Build(model);
        var modes = new List<ModeResult>();
        var losslessModes = new[] { Planner.Exact, Planner.ExactSimilar }.Select(mode => (Label: mode, Mode: mode, Steiner: false)).ToList();
        if (settings.Steiner)
        {
            losslessModes.Add(("exact-sim+steiner", Planner.ExactSimilar, true));
        }
        foreach (var (label, mode, withSteiner) in losslessModes)
        {
            io.Err.WriteLine($"{name}: {label} plans through the shared engine");
            var shared = model.WithPlans(Planner.PlanModel(model, mode, withSteiner));
            var predictions = new SharedEngine(shared).Run(test, threads).Predictions;
            var cost = shared.Plans.Select(p => Cost.PlanCost.Of(p.Value, shared.OutputShapes[p.Key])).ToList();
            modes.Add(new ModeResult(label, 1 - (cost.Sum(c => c.Conv2d) / report.BaselineConv2d()), 1 - ((double)cost.Sum(c => c.TapOps) / report.BaselineTapOps()),
                Accuracy(predictions, test), denseLossless is null ? null : Accuracy(new SharedEngine(shared).Run(lossless!, threads).Predictions, lossless!),
                predictions.Where((p, i) => p != dense[i]).Count()));
            Save(shared, outDir, $"{name}.{label}");
        }
        io.Err.WriteLine($"{name}: approximate search on {validation.Count} validation images");
        var merges = new MergeCache(); // the fine-tuning search below tries many of the same merges
        var approx = ApproximateSearch.Run(model, validation, train.Take(2000), settings.MaxLoss, null, settings.MaxRadius, threads,
            new ActionProgress<string>(line => io.Err.WriteLine($"  {line}")), merges);
        AddApproximate(modes, "approx", model, approx.Model, test, lossless, dense, threads);
        Save(approx.Model, outDir, $"{name}.approximate");
        var radii = string.Join(" ", approx.Radii.Select(p => $"conv{p.Key}={p.Value}"));
        if (settings.FinetuneEpochs > 0 && File.Exists(settings.Checkpoint))
        {
            // With fine-tuning to recover accuracy, the search may spend a larger budget before it; the final loss
            // is measured after fine-tuning, on validation for the choice and on test for the report.
            var before = settings.FinetuneSearchLoss == settings.MaxLoss ? approx
                : ApproximateSearch.Run(model, validation, train.Take(2000), settings.FinetuneSearchLoss, null, settings.MaxRadius, threads,
                    new ActionProgress<string>(line => io.Err.WriteLine($"  {line}")), merges);
            io.Err.WriteLine($"{name}: sharing-aware fine-tuning for {settings.FinetuneEpochs} epochs from {settings.Checkpoint}");
            var tuned = Training.SharingFineTuner.Run(settings.Checkpoint, model, before.Model, train, validation, settings.FinetuneEpochs, threads: threads,
                log: new ActionProgress<string>(line => io.Err.WriteLine($"  {line}")));
            var tunedModel = tuned.Model.WithPlans(Planner.PlanModel(tuned.Model, Planner.ExactSimilar));
            AddApproximate(modes, "approx+finetune", model, tunedModel, test, lossless, dense, threads);
            Save(tunedModel, outDir, $"{name}.approximate-finetuned");
            radii += string.Create(CultureInfo.InvariantCulture,
                $"; fine-tuned: search budget {settings.FinetuneSearchLoss:P1}, radii {string.Join(" ", before.Radii.Select(p => $"conv{p.Key}={p.Value}"))}, validation {before.BaselineAccuracy:P2} -> {tuned.ValidationBefore:P2} merged -> {tuned.ValidationAfter:P2} after {tuned.BestEpoch} epochs");
        }
        else if (settings.FinetuneEpochs > 0)
        {
            io.Err.WriteLine($"{name}: no sharing-aware fine-tuning: {settings.Checkpoint} (or its .best.pack) not found");
        }
        return new Row(name, Accuracy(dense, test), denseLossless is null ? null : Accuracy(denseLossless, lossless!), test.Count, modes, radii);
    }

    /// <summary>Adds the merge-only and with-derivations rows of an approximate model.</summary>
    private static void AddApproximate(List<ModeResult> modes, string label, BnnModel model, BnnModel shared, ImageSet test, ImageSet? lossless, int[] dense, int threads)
    {
        var report = SharingReport.Build(model, shared);
        var predictions = new SharedEngine(shared).Run(test, threads).Predictions;
        double? losslessAccuracy = lossless is null ? null : Accuracy(new PackedEngine(shared).Run(lossless, threads).Predictions, lossless);
        int changed = predictions.Where((p, i) => p != dense[i]).Count();
        modes.Add(new ModeResult(label + "-merge-only", 1 - (report.Conv2d(r => r.ApproximateMergeOnly)!.Value / report.BaselineConv2d()),
            1 - ((double)report.TapOps(r => r.ApproximateMergeOnly)!.Value / report.BaselineTapOps()), Accuracy(predictions, test), losslessAccuracy, changed));
        modes.Add(new ModeResult(label + "+derived", 1 - (report.Conv2d(r => r.Approximate)!.Value / report.BaselineConv2d()),
            1 - ((double)report.TapOps(r => r.Approximate)!.Value / report.BaselineTapOps()), Accuracy(predictions, test), losslessAccuracy, changed));
    }

    private static void Save(BnnModel model, string? outDir, string stem)
    {
        if (outDir is not null)
        {
            ModelFile.Save(model, Path.Combine(outDir, stem + ModelFile.Extension));
        }
    }

    private static double Accuracy(int[] predictions, ImageSet images) => EngineExtensions.Accuracy(predictions, images);

    private static string Render(IReadOnlyList<Row> rows, double maxLoss)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(inv, $"Convolution result sharing, reproduced (2-D convolutions and tap ops in all conv layers; accuracy loss on test, choices made on validation, budget {maxLoss:P1})");
        sb.AppendLine(inv, $"{"model",-16} {"mode",-26} {"2-D convs",10} {"tap ops",9} {"test acc",9} {"loss",7} {"lossless",9} {"changed",8}");
        foreach (var row in rows)
        {
            sb.AppendLine(inv, $"{row.Model,-16} {"dense",-26} {"-",10} {"-",9} {row.TestAccuracy,9:P2} {"-",7} {Format(row.LosslessAccuracy),9} {"-",8}");
            foreach (var m in row.Modes)
            {
                sb.AppendLine(inv, $"{"",-16} {m.Mode,-26} {m.Conv2dReduction,10:P1} {m.TapOpReduction,9:P1} {m.TestAccuracy,9:P2} {row.TestAccuracy - m.TestAccuracy,7:P2} {Format(m.LosslessAccuracy),9} {m.PredictionChanges,8}");
            }
            sb.AppendLine(inv, $"{"",-16} approximate radii: {row.Radii}");
        }
        sb.AppendLine("thesis (CIFAR-10 and SVHN): about 60% fewer 2-D convolutions in the conv layers within 1% accuracy loss");
        return sb.ToString();
    }

    private static string Format(double? v) => v is double d ? d.ToString("P2", CultureInfo.InvariantCulture) : "-";
}
