using Bnn.Cost;
using Bnn.Model;

namespace Bnn.Sharing;

/// <summary>One conv layer's figures in every sharing mode (null where a mode was not computed).</summary>
/// <remarks>
/// <c>ApproximateMergeOnly</c> is the merged weights under repeat + inverse sharing alone, the accounting of the
/// thesis; <c>Approximate</c> adds exact-similar derivations on top of the merge.
/// </remarks>
public sealed record LayerSharingRow(
    LayerAnalysis Analysis, string Name, long BaselineTapOps, long AccumulateAdds,
    PlanCost Exact, PlanCost ExactSimilar, PlanCost? ApproximateMergeOnly, PlanCost? Approximate);

/// <summary>Per-layer and total costs of a model under the sharing modes, computed with <see cref="CostModel"/>.</summary>
public sealed class SharingReport
{
    private SharingReport(IReadOnlyList<LayerSharingRow> rows) => Rows = rows;

    /// <summary>One row per conv layer that can be decomposed.</summary>
    public IReadOnlyList<LayerSharingRow> Rows { get; }

    /// <summary>
    /// Analyzes <paramref name="model"/>; <paramref name="approximate"/>, when given, is a model with merged weights
    /// and its own plans, whose cost fills the approximate column.
    /// </summary>
    public static SharingReport Build(BnnModel model, BnnModel? approximate = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var rows = new List<LayerSharingRow>();
        foreach (var (i, conv) in model.ConvLayers)
        {
            if (!FilterCode.Supports(conv))
            {
                continue;
            }
            var output = model.OutputShapes[i];
            PlanCost? approx = null, mergeOnly = null;
            if (approximate is not null)
            {
                var merged = (ConvLayer)approximate.Layers[i];
                var plan = approximate.Plans.TryGetValue(i, out var p) ? p : Planner.PlanExactSimilar(merged);
                approx = PlanCost.Of(plan, output);
                mergeOnly = PlanCost.Of(Planner.PlanExact(merged), output);
            }
            rows.Add(new LayerSharingRow(
                LayerAnalysis.Analyze(model, i), $"conv{i}", CostModel.ConvBaselineTapOps(conv, output), CostModel.AccumulateAdds(conv, output),
                PlanCost.Of(Planner.PlanExact(conv), output), PlanCost.Of(Planner.PlanExactSimilar(conv), output), mergeOnly, approx));
        }
        return new SharingReport(rows);
    }

    /// <summary>Rows over binary-input conv layers only (excluding the first, pixel-input layer) or all.</summary>
    public IEnumerable<LayerSharingRow> Select(bool includeInputLayer) => Rows.Where(r => includeInputLayer || !r.Analysis.IsInputLayer);

    /// <summary>Sum of baseline tap ops.</summary>
    public long BaselineTapOps(bool includeInputLayer = true) => Select(includeInputLayer).Sum(r => r.BaselineTapOps);

    /// <summary>Sum of baseline 2-D convolutions, K·C per layer.</summary>
    public double BaselineConv2d(bool includeInputLayer = true) => Select(includeInputLayer).Sum(r => (double)r.Analysis.Filters);

    /// <summary>Sum of a mode's tap ops (null if not computed for every layer).</summary>
    public long? TapOps(Func<LayerSharingRow, PlanCost?> mode, bool includeInputLayer = true)
    {
        var costs = Select(includeInputLayer).Select(mode).ToList();
        return costs.All(c => c.HasValue) ? costs.Sum(c => c!.Value.TapOps) : null;
    }

    /// <summary>Sum of a mode's 2-D convolutions (null if not computed for every layer).</summary>
    public double? Conv2d(Func<LayerSharingRow, PlanCost?> mode, bool includeInputLayer = true)
    {
        var costs = Select(includeInputLayer).Select(mode).ToList();
        return costs.All(c => c.HasValue) ? costs.Sum(c => c!.Value.Conv2d) : null;
    }

    /// <summary>Sum of accumulation additions (the same for every plan).</summary>
    public long AccumulateAdds(bool includeInputLayer = true) => Select(includeInputLayer).Sum(r => r.AccumulateAdds);
}
