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
        var maxLoss = new Option<double>("--max-loss") { Description = "approximate: validation accuracy budget", DefaultValueFactory = _ => 0.01 };
        var maxRadius = new Option<int>("--max-radius") { Description = "approximate: largest merge radius tried (1 keeps the run short; radius 2 rarely fits a 1% budget)", DefaultValueFactory = _ => 1 };
        var limit = CommonOptions.Limit();
        var threads = CommonOptions.Threads();
        var output = new Option<string?>("--out") { Description = "directory for the shared models and reproduce.json" };
        var command = new Command("reproduce", "Analyze, share (exact, exact-similar, approximate) and evaluate the shipped models; print the headline table")
        {
            data, svhn, models, maxLoss, maxRadius, limit, threads, output,
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
            foreach (var path in Directory.GetFiles(dir, "*" + ModelFile.Extension).Order())
            {
                var name = Path.GetFileNameWithoutExtension(path);
                string dataset = name.EndsWith("-svhn", StringComparison.Ordinal) ? "svhn" : "cifar10";
                string? dataDir = dataset == "svhn" ? parse.GetValue(svhn) : parse.GetValue(data);
                if (dataDir is null)
                {
                    io.Err.WriteLine($"skipping {name}: no {dataset} data given");
                    continue;
                }
                rows.Add(Reproduce(io, path, dataset, dataDir, parse.GetValue(maxLoss), parse.GetValue(maxRadius), parse.GetValue(limit), t, parse.GetValue(output)));
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

    private sealed record ModeResult(string Mode, double Conv2dReduction, double TapOpReduction, double TestAccuracy, double? LosslessAccuracy, int PredictionChanges);

    private sealed record Row(string Model, double TestAccuracy, double? LosslessAccuracy, int TestImages, IReadOnlyList<ModeResult> Modes, string Radii);

    private static Row Reproduce(CliIo io, string path, string dataset, string dataDir, double maxLoss, int maxRadius, int? limit, int threads, string? outDir)
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
        foreach (var mode in new[] { Planner.Exact, Planner.ExactSimilar })
        {
            io.Err.WriteLine($"{name}: {mode} plans through the shared engine");
            var shared = model.WithPlans(Planner.PlanModel(model, mode));
            var predictions = new SharedEngine(shared).Run(test, threads).Predictions;
            var select = mode == Planner.Exact ? (Func<LayerSharingRow, Cost.PlanCost?>)(r => r.Exact) : r => r.ExactSimilar;
            modes.Add(new ModeResult(mode, 1 - (report.Conv2d(select)!.Value / report.BaselineConv2d()), 1 - ((double)report.TapOps(select)!.Value / report.BaselineTapOps()),
                Accuracy(predictions, test), denseLossless is null ? null : Accuracy(new SharedEngine(shared).Run(lossless!, threads).Predictions, lossless!),
                predictions.Where((p, i) => p != dense[i]).Count()));
            Save(shared, outDir, $"{name}.{mode}");
        }
        io.Err.WriteLine($"{name}: approximate search on {validation.Count} validation images");
        var approx = ApproximateSearch.Run(model, validation, train.Take(2000), maxLoss, null, maxRadius, threads,
            new ActionProgress<string>(line => io.Err.WriteLine($"  {line}")));
        var approxReport = SharingReport.Build(model, approx.Model);
        var approxTest = new SharedEngine(approx.Model).Run(test, threads).Predictions;
        double? approxLossless = lossless is null ? null : Accuracy(new PackedEngine(approx.Model).Run(lossless, threads).Predictions, lossless);
        modes.Add(new ModeResult("approx-merge-only",
            1 - (approxReport.Conv2d(r => r.ApproximateMergeOnly)!.Value / approxReport.BaselineConv2d()),
            1 - ((double)approxReport.TapOps(r => r.ApproximateMergeOnly)!.Value / approxReport.BaselineTapOps()),
            Accuracy(approxTest, test), approxLossless, approxTest.Where((p, i) => p != dense[i]).Count()));
        modes.Add(new ModeResult(ApproximatePlanner.Mode,
            1 - (approxReport.Conv2d(r => r.Approximate)!.Value / approxReport.BaselineConv2d()),
            1 - ((double)approxReport.TapOps(r => r.Approximate)!.Value / approxReport.BaselineTapOps()),
            Accuracy(approxTest, test), approxLossless, approxTest.Where((p, i) => p != dense[i]).Count()));
        Save(approx.Model, outDir, $"{name}.approximate");
        var radii = string.Join(" ", approx.Radii.Select(p => $"conv{p.Key}={p.Value}"));
        return new Row(name, Accuracy(dense, test), denseLossless is null ? null : Accuracy(denseLossless, lossless!), test.Count, modes, radii);
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
        sb.AppendLine(inv, $"{"model",-16} {"mode",-18} {"2-D convs",10} {"tap ops",9} {"test acc",9} {"loss",7} {"lossless",9} {"changed",8}");
        foreach (var row in rows)
        {
            sb.AppendLine(inv, $"{row.Model,-16} {"dense",-18} {"-",10} {"-",9} {row.TestAccuracy,9:P2} {"-",7} {Format(row.LosslessAccuracy),9} {"-",8}");
            foreach (var m in row.Modes)
            {
                sb.AppendLine(inv, $"{"",-16} {m.Mode,-18} {m.Conv2dReduction,10:P1} {m.TapOpReduction,9:P1} {m.TestAccuracy,9:P2} {row.TestAccuracy - m.TestAccuracy,7:P2} {Format(m.LosslessAccuracy),9} {m.PredictionChanges,8}");
            }
            sb.AppendLine(inv, $"{"",-16} approximate radii: {row.Radii}");
        }
        sb.AppendLine("thesis (CIFAR-10 and SVHN): about 60% fewer 2-D convolutions in the conv layers within 1% accuracy loss");
        return sb.ToString();
    }

    private static string Format(double? v) => v is double d ? d.ToString("P2", CultureInfo.InvariantCulture) : "-";
}
