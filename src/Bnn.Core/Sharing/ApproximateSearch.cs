using Bnn.Cost;
using Bnn.Data;
using Bnn.Engine;
using Bnn.Model;

namespace Bnn.Sharing;

/// <summary>One evaluated candidate of the radius search.</summary>
/// <param name="Radii">Radius per conv layer index (0 = unchanged).</param>
/// <param name="MergedAccuracy">Validation accuracy right after merging.</param>
/// <param name="RecalibratedAccuracy">Validation accuracy after batch-norm recalibration (null if not run).</param>
/// <param name="Conv2dReduction">Fraction of 2-D convolutions saved in the conv layers (exact-similar on merged weights).</param>
/// <param name="Accepted">Whether the search kept it.</param>
public sealed record ApproximateCandidate(IReadOnlyDictionary<int, int> Radii, double MergedAccuracy, double? RecalibratedAccuracy, double Conv2dReduction, bool Accepted);

/// <summary>
/// Merged layers by (layer index, radius) for one model, so that several searches over the same model (a radius
/// sweep, then the automatic search) solve each channel's cover once.
/// </summary>
public sealed class MergeCache
{
    private readonly Dictionary<(int Layer, int Radius), ConvLayer> merged = [];

    /// <summary>Whether the layer's merge at the radius is already computed.</summary>
    public bool Contains(int layer, int radius)
    {
        lock (merged)
        {
            return merged.ContainsKey((layer, radius));
        }
    }

    /// <summary>The layer merged at the radius, computed on first use.</summary>
    public ConvLayer Get(BnnModel model, int layer, int radius)
    {
        ArgumentNullException.ThrowIfNull(model);
        lock (merged)
        {
            if (!merged.TryGetValue((layer, radius), out var result))
            {
                result = ApproximatePlanner.Merge((ConvLayer)model.Layers[layer], radius).Layer;
                merged[(layer, radius)] = result;
            }
            return result;
        }
    }
}

/// <summary>The chosen approximate model and how it was reached.</summary>
public sealed record ApproximateResult(
    BnnModel Model, IReadOnlyDictionary<int, int> Radii, double BaselineAccuracy, double MergedAccuracy, double? RecalibratedAccuracy,
    IReadOnlyList<ApproximateCandidate> Trace);

/// <summary>
/// Chooses a merge radius per conv layer to save as many 2-D convolutions as possible while the validation accuracy
/// stays within <c>maxLoss</c> of the original. Greedy: layers in decreasing order of 2-D filter count, each trying the
/// largest radius first and keeping the first that fits the budget (with recalibration when enabled). The final
/// model carries exact-similar plans over the merged weights, so derivations stack on top of merging.
/// Only validation images are used for decisions; the test split never enters here.
/// </summary>
public static class ApproximateSearch
{
    /// <summary>Runs the search (or applies <paramref name="fixedRadius"/> to every conv layer when given).</summary>
    public static ApproximateResult Run(BnnModel model, ImageSet validation, ImageSet? calibration, double maxLoss, int? fixedRadius,
        int maxRadius = 2, int threads = 1, IProgress<string>? log = null, MergeCache? cache = null)
    {
        cache ??= new MergeCache();
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(validation);
        double baseline = Accuracy(model, validation, threads);
        log?.Report($"validation baseline {baseline:P2}");
        var trace = new List<ApproximateCandidate>();
        var convs = model.ConvLayers.Where(p => FilterCode.Supports(p.Layer)).ToList();
        var radii = convs.ToDictionary(p => p.Index, _ => 0);

        (BnnModel Merged, BnnModel Final, double MergedAcc, double? RecalAcc, double Saving) Evaluate(Dictionary<int, int> candidate)
        {
            var layers = model.Layers.ToList();
            foreach (var (i, r) in candidate.Where(p => p.Value > 0))
            {
                if (!cache.Contains(i, r))
                {
                    // A wide layer's covers take minutes (a CP-SAT solve per channel); say so before the silence.
                    log?.Report($"conv{i} radius {r}: merging {((ConvLayer)model.Layers[i]).InChannels} channels");
                }
                layers[i] = cache.Get(model, i, r);
            }
            var mergedModel = model.WithLayers(layers);
            double mergedAcc = Accuracy(mergedModel, validation, threads);
            var final = mergedModel;
            double? recalAcc = null;
            if (calibration is not null)
            {
                final = Recalibration.Recalibrate(mergedModel, calibration, threads);
                recalAcc = Accuracy(final, validation, threads);
            }
            return (mergedModel, final, mergedAcc, recalAcc, Conv2dSaving(model, final));
        }

        if (fixedRadius is int fixedR)
        {
            foreach (var (i, _) in convs)
            {
                radii[i] = fixedR;
            }
            var e = Evaluate(radii);
            trace.Add(new ApproximateCandidate(new Dictionary<int, int>(radii), e.MergedAcc, e.RecalAcc, e.Saving, true));
            return Finish(e.Final, e.MergedAcc, e.RecalAcc);
        }

        double bestMerged = baseline;
        double? bestRecal = calibration is null ? null : baseline;
        var current = model;
        // The budget goes first to the layers with the most 2-D filters (K·C), the metric the target counts; ties by
        // dense tap cost. (Ordering by tap cost spent a CNV budget on conv1, 3 % of its 2-D convolutions.)
        foreach (var (i, conv) in convs.OrderByDescending(p => (long)p.Layer.OutChannels * p.Layer.InChannels)
                     .ThenByDescending(p => CostModel.ConvBaselineTapOps(p.Layer, model.OutputShapes[p.Index])))
        {
            for (int r = maxRadius; r >= 1; r--)
            {
                var candidate = new Dictionary<int, int>(radii) { [i] = r };
                var e = Evaluate(candidate);
                double acc = e.RecalAcc ?? e.MergedAcc;
                bool ok = baseline - acc <= maxLoss;
                trace.Add(new ApproximateCandidate(candidate, e.MergedAcc, e.RecalAcc, e.Saving, ok));
                log?.Report($"conv{i} radius {r}: merged {e.MergedAcc:P2}, recalibrated {(e.RecalAcc is double ra ? ra.ToString("P2") : "-")}, 2-D conv saving {e.Saving:P1} {(ok ? "kept" : "rejected")}");
                if (ok)
                {
                    radii = candidate;
                    current = e.Final;
                    bestMerged = e.MergedAcc;
                    bestRecal = e.RecalAcc;
                    break;
                }
            }
        }
        return Finish(current, bestMerged, bestRecal);

        ApproximateResult Finish(BnnModel final, double mergedAcc, double? recalAcc)
        {
            var plans = final.ConvLayers.Where(p => FilterCode.Supports(p.Layer))
                .ToDictionary(p => p.Index, p => Planner.PlanExactSimilar(p.Layer) is var plan ? new LayerPlan(ApproximatePlanner.Mode, plan.Taps, plan.Nodes, plan.Assignment, plan.Signs) : null!);
            return new ApproximateResult(final.WithPlans(plans), radii, baseline, mergedAcc, recalAcc, trace);
        }
    }

    /// <summary>Validation accuracy with the packed engine.</summary>
    public static double Accuracy(BnnModel model, ImageSet images, int threads)
    {
        ArgumentNullException.ThrowIfNull(images);
        return EngineExtensions.Accuracy(new PackedEngine(model).Run(images, threads).Predictions, images);
    }

    /// <summary>Fraction of 2-D convolutions in the conv layers saved by exact-similar plans on <paramref name="changed"/>'s weights.</summary>
    public static double Conv2dSaving(BnnModel original, BnnModel changed)
    {
        var report = SharingReport.Build(original, changed);
        return 1 - ((report.Conv2d(r => r.Approximate) ?? 0) / report.BaselineConv2d());
    }
}
