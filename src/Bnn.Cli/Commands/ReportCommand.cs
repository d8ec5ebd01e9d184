using System.CommandLine;
using System.Globalization;
using System.Text;
using Bnn.Data;
using Bnn.Sharing;

namespace Bnn.Cli;

/// <summary>
/// A Markdown report with PNG plots (ScottPlot): per-layer tables for every mode, a per-layer reduction bar chart,
/// and an accuracy-versus-reduction curve from a radius sweep. All accuracies here are validation accuracies
/// (the last 5,000 training records): the report is a tuning instrument, and the test split stays out of it.
/// </summary>
internal static class ReportCommand
{
    public static Command Create(CliIo io)
    {
        var model = CommonOptions.Model();
        var data = CommonOptions.Data();
        var dataset = CommonOptions.Dataset();
        var output = new Option<string>("--out") { Description = "directory for report.md and the PNG plots", Required = true };
        var maxLoss = new Option<double>("--max-loss") { Description = "approximate: validation accuracy budget", DefaultValueFactory = _ => 0.01 };
        var radii = new Option<string>("--sweep") { Description = "radii for the accuracy-vs-reduction sweep (comma-separated)", DefaultValueFactory = _ => "0,1" };
        var threads = CommonOptions.Threads();
        var command = new Command("report", "Markdown report with plots: per-layer sharing tables, reduction chart, accuracy-vs-reduction sweep")
        {
            model, data, dataset, output, maxLoss, radii, threads,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            int t = parse.GetValue(threads);
            CommonOptions.CheckThreads(t);
            var sweep = ParseRadii(parse.GetValue(radii)!);
            var path = parse.GetValue(model)!;
            var m = CommonOptions.LoadModel(path);
            var (train, validation) = Datasets.HoldOut(Datasets.Load(parse.GetValue(dataset)!, parse.GetValue(data)!, "train"));
            var calibration = train.Take(2000);
            var outDir = parse.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            var log = new ActionProgress<string>(line => io.Err.WriteLine(line));
            var cache = new MergeCache();
            var points = new List<(int Radius, double Reduction, double Merged, double? Recalibrated)>();
            foreach (var r in sweep)
            {
                var result = ApproximateSearch.Run(m, validation, calibration, 1.0, r, threads: t, cache: cache);
                points.Add((r, ApproximateSearch.Conv2dSaving(m, result.Model), result.MergedAccuracy, result.RecalibratedAccuracy));
                log.Report($"sweep radius {r}: reduction {points[^1].Reduction:P1}, merged {result.MergedAccuracy:P2}, recalibrated {result.RecalibratedAccuracy:P2}");
            }
            var auto = ApproximateSearch.Run(m, validation, calibration, parse.GetValue(maxLoss), null, sweep.Max(), t, log, cache);
            var report = SharingReport.Build(m, auto.Model);
            Plots.ReductionBars(report, Path.Combine(outDir, "reduction-per-layer.png"));
            Plots.AccuracyVersusReduction(points, (ApproximateSearch.Conv2dSaving(m, auto.Model), auto.RecalibratedAccuracy ?? auto.MergedAccuracy),
                auto.BaselineAccuracy, Path.Combine(outDir, "accuracy-vs-reduction.png"));
            File.WriteAllText(Path.Combine(outDir, "report.md"), Markdown(path, report, auto, points, parse.GetValue(maxLoss)));
            io.Out.WriteLine($"wrote {Path.Combine(outDir, "report.md")}");
            return BnnApp.Ok;
        }));
        return command;
    }

    private static int[] ParseRadii(string text)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var values = new List<int>();
        foreach (var p in parts)
        {
            if (!int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out var r) || r > 8)
            {
                throw new UsageException($"--sweep: '{p}' is not a radius in 0..8");
            }
            values.Add(r);
        }
        return values.Count == 0 ? throw new UsageException("--sweep needs at least one radius") : [.. values.Distinct().Order()];
    }

    private static string Markdown(string modelPath, SharingReport report, ApproximateResult auto,
        List<(int Radius, double Reduction, double Merged, double? Recalibrated)> sweep, double maxLoss)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(inv, $"# Convolution result sharing: {Path.GetFileName(modelPath)}");
        sb.AppendLine();
        sb.AppendLine("Costs follow docs/cost-model.md. Accuracies are on the validation split (last 5,000 training records).");
        sb.AppendLine();
        sb.AppendLine("## Per layer");
        sb.AppendLine();
        sb.AppendLine("| layer | K | C | out | classes/ch (mean, max) | repeated | inverse | tap ops: dense | exact | exact-similar | approximate | 2-D convs: dense | exact | exact-similar | approximate |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var r in report.Rows)
        {
            var a = r.Analysis;
            sb.AppendLine(inv, $"| {r.Name}{(a.IsInputLayer ? " (first)" : "")} | {a.OutChannels} | {a.InChannels} | {a.OutH}x{a.OutW} | {a.MeanClassesPerChannel:F1}, {a.MaxClassesPerChannel} | {a.Repeated:N0} | {a.Inverse:N0} | {r.BaselineTapOps:N0} | {r.Exact.TapOps:N0} | {r.ExactSimilar.TapOps:N0} | {r.Approximate?.TapOps:N0} | {a.Filters:N0} | {r.Exact.Conv2d:N1} | {r.ExactSimilar.Conv2d:N1} | {r.Approximate?.Conv2d:N1} |");
        }
        sb.AppendLine();
        sb.AppendLine("## Totals (all conv layers)");
        sb.AppendLine();
        sb.AppendLine("| mode | tap ops | fewer | 2-D convs | fewer |");
        sb.AppendLine("|---|---|---|---|---|");
        sb.AppendLine(inv, $"| dense | {report.BaselineTapOps():N0} | - | {report.BaselineConv2d():N0} | - |");
        foreach (var (mode, select) in SharingOutput.Modes)
        {
            if (report.TapOps(select) is long t && report.Conv2d(select) is double c)
            {
                sb.AppendLine(inv, $"| {mode} | {t:N0} | {SharingOutput.Saving(t, report.BaselineTapOps())} | {c:N1} | {SharingOutput.Saving(c, report.BaselineConv2d())} |");
            }
        }
        sb.AppendLine(inv, $"| accumulation (every plan) | {report.AccumulateAdds():N0} additions | | | |");
        sb.AppendLine();
        sb.AppendLine("![reduction per layer](reduction-per-layer.png)");
        sb.AppendLine();
        sb.AppendLine("## Approximate sharing");
        sb.AppendLine();
        sb.AppendLine(inv, $"Automatic radii under a {maxLoss:P1} validation budget: {string.Join(", ", auto.Radii.Select(p => $"conv{p.Key} = {p.Value}"))}.");
        sb.AppendLine(inv, $"Validation accuracy: dense {auto.BaselineAccuracy:P2}, merged {auto.MergedAccuracy:P2}, after batch-norm recalibration {(auto.RecalibratedAccuracy is double ra ? ra.ToString("P2", inv) : "-")}.");
        sb.AppendLine();
        sb.AppendLine("| radius (all layers) | 2-D convs fewer | validation merged | validation recalibrated |");
        sb.AppendLine("|---|---|---|---|");
        foreach (var p in sweep)
        {
            sb.AppendLine(inv, $"| {p.Radius} | {p.Reduction:P1} | {p.Merged:P2} | {(p.Recalibrated is double v ? v.ToString("P2", inv) : "-")} |");
        }
        sb.AppendLine();
        sb.AppendLine("Search trace (layers in decreasing dense cost, largest radius first):");
        sb.AppendLine();
        foreach (var c in auto.Trace)
        {
            sb.AppendLine(inv, $"- {string.Join(" ", c.Radii.Where(p => p.Value > 0).Select(p => $"conv{p.Key}={p.Value}"))}: merged {c.MergedAccuracy:P2}, recalibrated {(c.RecalibratedAccuracy is double v ? v.ToString("P2", inv) : "-")}, 2-D convs fewer {c.Conv2dReduction:P1}: {(c.Accepted ? "kept" : "rejected")}");
        }
        sb.AppendLine();
        sb.AppendLine("![accuracy versus reduction](accuracy-vs-reduction.png)");
        return sb.ToString();
    }
}
