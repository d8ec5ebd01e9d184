using Bnn.Model;
using Google.OrTools.Sat;

namespace Bnn.Sharing;

/// <summary>The outcome of covering one channel's classes.</summary>
/// <param name="Representatives">The chosen class codes.</param>
/// <param name="Optimal">Whether CP-SAT proved the count minimal.</param>
public sealed record ChannelCover(int[] Representatives, bool Optimal);

/// <summary>
/// Approximate sharing: per input channel, choose representative codes (any of the 2^(n−1) classes) so that every
/// class present lies within radius r of one, with as few representatives as possible (a set cover, solved exactly
/// with CP-SAT), then map every 2-D filter to its nearest representative with the orientation (sign) closest to it.
/// This changes the model; accuracy is measured and recovered elsewhere.
/// <para>Budget: on trained CNV channels (about 130 of the 256 classes present) radius-1 covers are hard to prove
/// optimal: 5 s per channel proved 7 of 20 and 0.5 s proved 1 of 20, with 7% more representatives than the 5 s
/// solutions (measured 2026-11-27). A whole CNV has 643 channels, so each solve is capped at
/// <see cref="SolverSecondsPerChannel"/> units of CP-SAT's <i>deterministic</i> time (about 0.4 s each here),
/// starting from the greedy cover as a hint; <see cref="ChannelCover.Optimal"/> records whether optimality was
/// proven. A wall-clock cap made the chosen covers depend on machine load, so two runs merged differently.</para>
/// </summary>
public static class ApproximatePlanner
{
    /// <summary>Mode name.</summary>
    public const string Mode = "approximate";

    /// <summary>CP-SAT deterministic-time limit per channel (see the class remarks).</summary>
    public const double SolverSecondsPerChannel = 0.25;

    /// <summary>Minimum set of class codes covering <paramref name="classes"/> within <paramref name="radius"/>.</summary>
    public static ChannelCover Cover(IReadOnlyCollection<int> classes, int n, int radius)
    {
        ArgumentNullException.ThrowIfNull(classes);
        if (radius <= 0 || classes.Count <= 1)
        {
            return new ChannelCover([.. classes.Order()], true);
        }
        var present = classes.Distinct().Order().ToArray();
        // Classes are exactly the codes whose top bit is 0 (the smaller of a code and its complement).
        int candidates = 1 << (n - 1);
        var covers = new List<(int Code, ulong[] Set)>();
        int words = (present.Length + 63) / 64;
        for (int j = 0; j < candidates; j++)
        {
            var set = new ulong[words];
            bool any = false;
            for (int i = 0; i < present.Length; i++)
            {
                if (FilterCode.Distance(present[i], j, n) <= radius)
                {
                    set[i >> 6] |= 1UL << (i & 63);
                    any = true;
                }
            }
            if (any)
            {
                covers.Add((j, set));
            }
        }
        // A candidate whose covered set lies inside another's is never needed: drop it (keeps the optimum).
        var kept = covers.Where((a, ai) => !covers.Where((b, bi) => bi != ai).Any(b => Subset(a.Set, b.Set) && (!Subset(b.Set, a.Set) || b.Code < a.Code))).ToList();
        var greedy = Greedy(kept, present.Length);
        if (greedy.Count <= PackingLowerBound(kept, present.Length))
        {
            // Classes that no single candidate covers together each need their own representative: the greedy
            // cover meets that bound, so it is optimal and the solver is not needed.
            return new ChannelCover([.. greedy.Select(j => kept[j].Code).Order()], true);
        }
        var model = new CpModel();
        var chosen = kept.Select(c => model.NewBoolVar($"r{c.Code}")).ToArray();
        for (int i = 0; i < present.Length; i++)
        {
            model.AddBoolOr(Enumerable.Range(0, kept.Count).Where(j => ((kept[j].Set[i >> 6] >> (i & 63)) & 1) != 0).Select(j => (ILiteral)chosen[j]));
        }
        model.Add(LinearExpr.Sum(chosen) <= greedy.Count);
        model.Minimize(LinearExpr.Sum(chosen));
        for (int j = 0; j < kept.Count; j++)
        {
            model.AddHint(chosen[j], greedy.Contains(j) ? 1 : 0);
        }
        var solver = new CpSolver
        {
            // The default portfolio proves these covers optimal in milliseconds where a single worker can take
            // seconds; interleaved search keeps the multi-worker run deterministic, so plans reproduce.
            StringParameters = $"num_workers:8 interleave_search:true random_seed:1 max_deterministic_time:{SolverSecondsPerChannel}",
        };
        var status = solver.Solve(model);
        if (status is not (CpSolverStatus.Optimal or CpSolverStatus.Feasible))
        {
            return new ChannelCover([.. greedy.Select(j => kept[j].Code).Order()], false);
        }
        var reps = Enumerable.Range(0, kept.Count).Where(j => solver.BooleanValue(chosen[j])).Select(j => kept[j].Code).ToArray();
        return new ChannelCover(reps, status == CpSolverStatus.Optimal);
    }

    private static bool Subset(ulong[] a, ulong[] b)
    {
        for (int w = 0; w < a.Length; w++)
        {
            if ((a[w] & ~b[w]) != 0)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// A lower bound on any cover: a greedy set of classes no two of which share a covering candidate.
    /// </summary>
    private static int PackingLowerBound(List<(int Code, ulong[] Set)> covers, int count)
    {
        var blocked = new bool[count];
        int packed = 0;
        // Classes with the fewest covering candidates first: they are the most constrained.
        var order = Enumerable.Range(0, count).OrderBy(i => covers.Count(c => ((c.Set[i >> 6] >> (i & 63)) & 1) != 0)).ThenBy(i => i);
        foreach (int i in order)
        {
            if (blocked[i])
            {
                continue;
            }
            packed++;
            foreach (var c in covers)
            {
                if (((c.Set[i >> 6] >> (i & 63)) & 1) != 0)
                {
                    for (int other = 0; other < count; other++)
                    {
                        if (((c.Set[other >> 6] >> (other & 63)) & 1) != 0)
                        {
                            blocked[other] = true;
                        }
                    }
                }
            }
        }
        return packed;
    }

    /// <summary>The classic greedy cover: an upper bound and a solver hint.</summary>
    private static HashSet<int> Greedy(List<(int Code, ulong[] Set)> covers, int count)
    {
        var uncovered = new ulong[(count + 63) / 64];
        for (int i = 0; i < count; i++)
        {
            uncovered[i >> 6] |= 1UL << (i & 63);
        }
        var picked = new HashSet<int>();
        while (uncovered.Any(w => w != 0))
        {
            int best = -1, bestGain = 0;
            for (int j = 0; j < covers.Count; j++)
            {
                int gain = 0;
                for (int w = 0; w < uncovered.Length; w++)
                {
                    gain += System.Numerics.BitOperations.PopCount(covers[j].Set[w] & uncovered[w]);
                }
                if (gain > bestGain)
                {
                    best = j;
                    bestGain = gain;
                }
            }
            picked.Add(best);
            for (int w = 0; w < uncovered.Length; w++)
            {
                uncovered[w] &= ~covers[best].Set[w];
            }
        }
        return picked;
    }

    /// <summary>
    /// The layer with every 2-D filter replaced by its nearest representative at radius <paramref name="radius"/>,
    /// and how many channel covers were proven optimal.
    /// </summary>
    public static (ConvLayer Layer, int OptimalChannels) Merge(ConvLayer layer, int radius)
    {
        ArgumentNullException.ThrowIfNull(layer);
        int n = layer.KernelH * layer.KernelW;
        var codes = FilterCode.Codes(layer);
        var weights = (sbyte[])layer.Weights.Clone();
        int optimal = 0;
        for (int c = 0; c < layer.InChannels; c++)
        {
            var classes = codes[c].Select(code => FilterCode.Class(code, n)).Distinct().ToList();
            var cover = Cover(classes, n, radius);
            optimal += cover.Optimal ? 1 : 0;
            for (int k = 0; k < layer.OutChannels; k++)
            {
                int u = codes[c][k];
                int best = cover.Representatives.MinBy(r => (FilterCode.Distance(u, r, n), r));
                int h = FilterCode.Hamming(u, best);
                int merged = h <= n - h ? best : best ^ FilterCode.Mask(n);
                for (int t = 0; t < n; t++)
                {
                    weights[(((k * layer.InChannels) + c) * n) + t] = ((merged >> t) & 1) != 0 ? (sbyte)-1 : (sbyte)1;
                }
            }
        }
        var result = layer.With(weights, layer.Norm);
        return (result, optimal);
    }
}
