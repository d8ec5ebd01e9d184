using Bnn.Model;

namespace Bnn.Sharing;

/// <summary>Lossless planners: repeated + inverse sharing, and minimum-cost derivation forests over classes.</summary>
public static class Planner
{
    /// <summary>Mode name of the repeated + inverse planner.</summary>
    public const string Exact = "exact";

    /// <summary>Mode name of the derivation-forest planner.</summary>
    public const string ExactSimilar = "exact-similar";

    /// <summary>
    /// Every distinct class per channel is computed once from scratch; repeats reuse it and inverses reuse it negated.
    /// </summary>
    public static LayerPlan PlanExact(ConvLayer layer) => Build(layer, Exact, classes => classes.Select(_ => -1).ToArray());

    /// <summary>Mode name of the plan without sharing.</summary>
    public const string Dense = "dense";

    /// <summary>
    /// No sharing: every 2-D filter (k, c) is its own node, computed from scratch. It lets the plane conv run a layer
    /// densely (the fast engine's first layer), and is the baseline the cost model's savings are measured against.
    /// </summary>
    public static LayerPlan PlanDense(ConvLayer layer)
    {
        ArgumentNullException.ThrowIfNull(layer);
        int n = layer.KernelH * layer.KernelW, k = layer.OutChannels, channels = layer.InChannels;
        var codes = FilterCode.Codes(layer);
        var nodes = new List<PlanNode>(k * channels);
        var assignment = new int[k * channels];
        for (int c = 0; c < channels; c++)
        {
            for (int f = 0; f < k; f++)
            {
                assignment[(f * channels) + c] = nodes.Count;
                nodes.Add(new PlanNode(c, codes[c][f], -1));
            }
        }
        return new LayerPlan(Dense, n, nodes, assignment, Enumerable.Repeat((sbyte)1, k * channels).ToArray());
    }

    /// <summary>
    /// Per channel, a minimum spanning arborescence over the classes plus a virtual root: the root edge costs n
    /// (compute from scratch) and a class-to-class edge costs d(u, v) (derive by correcting d taps). With symmetric
    /// edge costs this is an MST on classes ∪ {root}, which Prim's algorithm finds. It is optimal among plans whose
    /// nodes are the present classes; with <paramref name="steiner"/>, unused codes may be added as intermediates where
    /// CP-SAT finds a cheaper Steiner forest (<see cref="SteinerPlanner"/>).
    /// </summary>
    public static LayerPlan PlanExactSimilar(ConvLayer layer, bool steiner = false)
    {
        int n = layer.KernelH * layer.KernelW;
        return Build(layer, ExactSimilar, classes => steiner ? SteinerPlanner.Forest(classes, n) : MinimumForest(classes, n));
    }

    /// <summary>Plans every decomposable conv layer of <paramref name="model"/> with a lossless mode.</summary>
    public static Dictionary<int, LayerPlan> PlanModel(BnnModel model, string mode, bool steiner = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        Func<ConvLayer, LayerPlan> plan = mode switch
        {
            Exact => PlanExact,
            ExactSimilar => layer => PlanExactSimilar(layer, steiner),
            _ => throw new ArgumentException($"'{mode}' is not a lossless mode", nameof(mode)),
        };
        return model.ConvLayers.Where(p => FilterCode.Supports(p.Layer)).ToDictionary(p => p.Index, p => plan(p.Layer));
    }

    /// <summary>
    /// Prim's algorithm from the virtual root. Returns parent indices into <paramref name="classes"/> (−1 = root) in
    /// the order the classes were added, so parents precede children; <paramref name="classes"/> is reordered to match.
    /// </summary>
    internal static int[] MinimumForest(List<int> classes, int n)
    {
        int m = classes.Count;
        var key = Enumerable.Repeat(n, m).ToArray();
        var parent = Enumerable.Repeat(-1, m).ToArray();
        var done = new bool[m];
        var order = new List<int>(m);
        for (int step = 0; step < m; step++)
        {
            int best = -1;
            for (int i = 0; i < m; i++)
            {
                if (!done[i] && (best < 0 || key[i] < key[best]))
                {
                    best = i;
                }
            }
            done[best] = true;
            order.Add(best);
            for (int i = 0; i < m; i++)
            {
                if (!done[i])
                {
                    int d = FilterCode.Distance(classes[best], classes[i], n);
                    if (d < key[i])
                    {
                        key[i] = d;
                        parent[i] = best;
                    }
                }
            }
        }
        var position = new int[m];
        for (int i = 0; i < m; i++)
        {
            position[order[i]] = i;
        }
        var reordered = order.Select(i => classes[i]).ToList();
        var parents = order.Select(i => parent[i] < 0 ? -1 : position[parent[i]]).ToArray();
        classes.Clear();
        classes.AddRange(reordered);
        return parents;
    }

    /// <summary>
    /// Collects each channel's classes in first-appearance order, lets <paramref name="forest"/> order them (and append
    /// any intermediate codes) and pick parents (indices within the channel, −1 for roots, parents first), and assigns
    /// every filter to its class node.
    /// </summary>
    private static LayerPlan Build(ConvLayer layer, string mode, Func<List<int>, int[]> forest)
    {
        if (!FilterCode.Supports(layer))
        {
            throw new ArgumentException($"kernels of {layer.KernelH}x{layer.KernelW} exceed {FilterCode.MaxTaps} taps", nameof(layer));
        }
        int n = layer.KernelH * layer.KernelW;
        int k = layer.OutChannels, channels = layer.InChannels;
        var nodes = new List<PlanNode>();
        var assignment = new int[k * channels];
        var signs = new sbyte[k * channels];
        var codes = FilterCode.Codes(layer);
        for (int c = 0; c < channels; c++)
        {
            var classes = codes[c].Select(code => FilterCode.Class(code, n)).Distinct().ToList();
            var parents = forest(classes);
            int first = nodes.Count;
            var nodeOf = new Dictionary<int, int>();
            for (int i = 0; i < classes.Count; i++)
            {
                nodeOf[classes[i]] = first + i;
                nodes.Add(new PlanNode(c, classes[i], parents[i] < 0 ? -1 : first + parents[i]));
            }
            for (int f = 0; f < k; f++)
            {
                int code = codes[c][f];
                assignment[(f * channels) + c] = nodeOf[FilterCode.Class(code, n)];
                signs[(f * channels) + c] = (sbyte)FilterCode.Sign(code, n);
            }
        }
        return new LayerPlan(mode, n, nodes, assignment, signs);
    }
}
