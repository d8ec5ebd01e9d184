using Bnn.Cost;
using Bnn.Training;
using System.CommandLine;
using System.Globalization;
using Bnn.Data;
using Bnn.Engine;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Cli;

internal static class ShareCommand
{
    public static IReadOnlyList<string> Modes { get; } = [Planner.Exact, Planner.ExactSimilar, ApproximatePlanner.Mode];

    public static Command Create(CliIo io)
    {
        var model = CommonOptions.Model();
        var mode = new Option<string>("--mode") { Description = "sharing mode", Required = true }.AcceptOnlyFromAmong([.. Modes]);
        var maxLoss = new Option<double>("--max-loss") { Description = "approximate: largest validation accuracy loss allowed (fraction)", DefaultValueFactory = _ => 0.01 };
        var radius = new Option<string>("--radius") { Description = "approximate: merge radius for every conv layer, or auto (per layer, under --max-loss)", DefaultValueFactory = _ => "auto" };
        var maxRadius = new Option<int>("--max-radius") { Description = "approximate, auto: largest radius tried", DefaultValueFactory = _ => 2 };
        var data = CommonOptions.Data(required: false);
        var dataset = CommonOptions.Dataset();
        var finetuneEpochs = new Option<int>("--finetune-epochs") { Description = "approximate: epochs of sharing-aware fine-tuning after merging (needs --checkpoint)", DefaultValueFactory = _ => 0 };
        var finetuneLr = new Option<double>("--finetune-lr") { Description = "approximate: peak learning rate of the fine-tuning (cosine to 0)", DefaultValueFactory = _ => 2e-4 };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "approximate: the training checkpoint the model was exported from (latent weights for fine-tuning)" };
        var steiner = new Option<bool>("--steiner") { Description = "exact-similar: also try unused codes as intermediates (CP-SAT Steiner forests) and report the gain over the MST" };
        var calibration = new Option<int>("--calibration") { Description = "approximate: training images used to recalibrate batch norm (0: off)", DefaultValueFactory = _ => 2000 };
        var output = new Option<string>("--out") { Description = "model file to write, carrying its plans", Required = true };
        var threads = CommonOptions.Threads();
        var json = CommonOptions.Json();
        var command = new Command("share", "Plan convolution result sharing and write a model that carries its plan")
        {
            model, mode, maxLoss, radius, maxRadius, data, dataset, calibration, finetuneEpochs, finetuneLr, checkpoint, steiner, output, threads, json,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            int t = parse.GetValue(threads);
            CommonOptions.CheckThreads(t);
            var modelPath = parse.GetValue(model)!;
            var m = CommonOptions.LoadModel(modelPath);
            var chosen = parse.GetValue(mode)!;
            string? dataDir = parse.GetValue(data);
            ImageSet? validation = null, calibrationSet = null, trainSet = null;
            if (dataDir is not null)
            {
                var (train, val) = Datasets.HoldOut(Datasets.Load(parse.GetValue(dataset)!, dataDir, "train"));
                validation = val;
                trainSet = train;
                int calibrate = parse.GetValue(calibration);
                calibrationSet = calibrate > 0 ? train.Take(calibrate) : null;
            }
            BnnModel shared;
            SharingReport report;
            SharingAccuracy? accuracy = null;
            IReadOnlyDictionary<int, int>? radii = null;
            FineTuneResult? finetuned = null;
            int epochs = parse.GetValue(finetuneEpochs);
            if (epochs < 0 || (epochs > 0 && (chosen != ApproximatePlanner.Mode || parse.GetValue(checkpoint) is null)))
            {
                throw new UsageException("--finetune-epochs needs --mode approximate and --checkpoint, and must be ≥ 0");
            }
            if (chosen == ApproximatePlanner.Mode)
            {
                if (validation is null)
                {
                    throw new UsageException("--mode approximate needs --data: accuracy is measured on the validation split");
                }
                double budget = parse.GetValue(maxLoss);
                if (budget is < 0 or > 1)
                {
                    throw new UsageException("--max-loss must be a fraction between 0 and 1");
                }
                var radiusText = parse.GetValue(radius)!;
                int? fixedRadius = radiusText == "auto" ? null
                    : int.TryParse(radiusText, NumberStyles.None, CultureInfo.InvariantCulture, out var r) && r >= 0 ? r
                    : throw new UsageException($"--radius must be a non-negative integer or auto, not '{radiusText}'");
                var result = ApproximateSearch.Run(m, validation, calibrationSet, budget, fixedRadius, parse.GetValue(maxRadius), t,
                    new ActionProgress<string>(line => io.Err.WriteLine(line)));
                shared = result.Model;
                radii = result.Radii;
                io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"radii: {string.Join(", ", result.Radii.Select(p => $"conv{p.Key}={p.Value}"))}; validation accuracy {result.BaselineAccuracy:P2} -> merged {result.MergedAccuracy:P2} -> recalibrated {(result.RecalibratedAccuracy is double ra ? ra.ToString("P2", CultureInfo.InvariantCulture) : "-")}"));
                double sharedAccuracy = result.RecalibratedAccuracy ?? result.MergedAccuracy;
                if (epochs > 0)
                {
                    finetuned = SharingFineTuner.Run(parse.GetValue(checkpoint)!, m, shared, trainSet!, validation, epochs, parse.GetValue(finetuneLr), t,
                        log: new ActionProgress<string>(line => io.Err.WriteLine(line)));
                    // The class structure is kept by construction; the plans are rebuilt over the fine-tuned codes.
                    shared = finetuned.Model.WithPlans(Planner.PlanModel(finetuned.Model, Planner.ExactSimilar));
                    sharedAccuracy = finetuned.ValidationAfter;
                    io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"fine-tuned {epochs} epochs: validation accuracy {finetuned.ValidationBefore:P2} -> {finetuned.ValidationAfter:P2} (best epoch {finetuned.BestEpoch})"));
                }
                report = SharingReport.Build(m, shared);
                accuracy = new SharingAccuracy(null, null, result.BaselineAccuracy, sharedAccuracy);
            }
            else
            {
                if (parse.GetValue(steiner) && chosen != Planner.ExactSimilar)
                {
                    throw new UsageException("--steiner applies to --mode exact-similar");
                }
                shared = m.WithPlans(Planner.PlanModel(m, chosen, parse.GetValue(steiner)));
                report = SharingReport.Build(m);
                if (parse.GetValue(steiner))
                {
                    long mst = report.TapOps(r => r.ExactSimilar)!.Value;
                    long withSteiner = shared.Plans.Sum(p => PlanCost.Of(p.Value, shared.OutputShapes[p.Key]).TapOps);
                    long intermediates = shared.Plans.Sum(p => p.Value.Nodes.Count) - report.Rows.Sum(r => r.Analysis.DistinctClasses);
                    io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"Steiner intermediates: {intermediates:N0} added; {withSteiner:N0} tap ops vs {mst:N0} for the MST plans ({(double)(mst - withSteiner) / mst:P2} fewer)"));
                }
                if (validation is not null)
                {
                    // Lossless by construction; measured anyway so the claim is checked on real data every run.
                    var dense = new PackedEngine(m).Run(validation, t).Predictions;
                    var viaPlan = new SharedEngine(shared).Run(validation, t).Predictions;
                    double Acc(int[] p) => EngineExtensions.Accuracy(p, validation);
                    accuracy = new SharingAccuracy(null, null, Acc(dense), Acc(viaPlan));
                    io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"validation: dense {Acc(dense):P2}, shared {Acc(viaPlan):P2}, {dense.Where((p, i) => p != viaPlan[i]).Count()} predictions differ"));
                }
            }
            ModelFile.Save(shared, parse.GetValue(output)!);
            io.Out.Write(SharingOutput.RenderTable(report));
            io.Out.WriteLine($"wrote {parse.GetValue(output)} ({chosen} plans)");
            if (parse.GetValue(json) is string jsonPath)
            {
                CommonOptions.WriteJson(jsonPath, w => SharingOutput.WriteJson(w, modelPath, report, accuracy, w2 =>
                {
                    w2.WriteString("mode", chosen);
                    if (finetuned is not null)
                    {
                        w2.WriteStartObject("finetune");
                        w2.WriteNumber("epochs", finetuned.History.Count);
                        w2.WriteNumber("best_epoch", finetuned.BestEpoch);
                        w2.WriteNumber("validation_before", finetuned.ValidationBefore);
                        w2.WriteNumber("validation_after", finetuned.ValidationAfter);
                        w2.WriteEndObject();
                    }
                    if (radii is not null)
                    {
                        w2.WriteStartObject("radius");
                        foreach (var (i, r) in radii)
                        {
                            w2.WriteNumber($"conv{i}", r);
                        }
                        w2.WriteEndObject();
                    }
                }));
            }
            return BnnApp.Ok;
        }));
        return command;
    }
}
