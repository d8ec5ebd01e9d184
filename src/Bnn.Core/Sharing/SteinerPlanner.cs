using Google.OrTools.Sat;

namespace Bnn.Sharing;

/// <summary>
/// Derivation forests with Steiner intermediates: a code no filter of the channel uses can still be worth computing
/// when several present classes derive from it more cheaply than from each other (three classes pairwise 2 apart
/// around a common neighbour cost 4 taps as an MST and 3 through the neighbour). Per channel this is a minimum
/// Steiner arborescence from a virtual root (edge cost n: compute from scratch) over class codes (edge cost d, the
/// inversion-free distance), solved with CP-SAT as a single-commodity flow, hinted with the MST and kept only where
/// it is cheaper. Candidates are the unused classes at distance 1 from at least two present classes, and arcs are
/// limited to the longest MST edge; within that candidate set the solver's answer is optimal when it says so.
/// </summary>
public static class SteinerPlanner
{
    /// <summary>CP-SAT deterministic-time cap per channel (a few hundred milliseconds of wall time here).</summary>
    public const double SolverTimePerChannel = 0.1;

    /// <summary>
    /// Improves the MST over <paramref name="classes"/> (reordered in place, with any intermediates appended, parents
    /// before children) and returns the parents. Never costs more than the MST.
    /// </summary>
    internal static int[] Forest(List<int> classes, int n)
    {
        var terminals = classes.ToList();
        var mstCodes = terminals.ToList();
        var mstParents = Planner.MinimumForest(mstCodes, n);
        long mstCost = Cost(mstCodes, mstParents, n);
        int m = terminals.Count;
        // Every class beyond the first costs at least one tap: at that bound the MST is already optimal.
        if (mstCost <= n + m - 1)
        {
            return Adopt(classes, mstCodes, mstParents);
        }
        var present = terminals.ToHashSet();
        var candidates = new List<int>();
        for (int code = 0; code < 1 << (n - 1); code++)
        {
            if (!present.Contains(code) && terminals.Count(t => FilterCode.Distance(t, code, n) == 1) >= 2)
            {
                candidates.Add(code);
            }
        }
        if (candidates.Count == 0)
        {
            return Adopt(classes, mstCodes, mstParents);
        }
        var nodes = terminals.Concat(candidates).ToList();
        int maxEdge = Enumerable.Range(0, mstCodes.Count).Where(i => mstParents[i] >= 0).Select(i => FilterCode.Distance(mstCodes[i], mstCodes[mstParents[i]], n)).DefaultIfEmpty(1).Max();
        var solved = Solve(nodes, m, n, maxEdge, mstCodes, mstParents);
        if (solved is null || Cost(solved.Value.Codes, solved.Value.Parents, n) >= mstCost)
        {
            return Adopt(classes, mstCodes, mstParents);
        }
        return Adopt(classes, solved.Value.Codes, solved.Value.Parents);
    }

    /// <summary>Tap ops of a forest per output position: n per root, the distance to the parent otherwise.</summary>
    internal static long Cost(IReadOnlyList<int> codes, IReadOnlyList<int> parents, int n) =>
        Enumerable.Range(0, codes.Count).Sum(i => parents[i] < 0 ? (long)n : FilterCode.Distance(codes[i], codes[parents[i]], n));

    private static int[] Adopt(List<int> classes, List<int> codes, int[] parents)
    {
        classes.Clear();
        classes.AddRange(codes);
        return parents;
    }

    private static (List<int> Codes, int[] Parents)? Solve(List<int> nodes, int terminals, int n, int maxEdge, List<int> mstCodes, int[] mstParents)
    {
        int count = nodes.Count, root = count;
        var arcs = new List<(int From, int To, int Cost)>();
        for (int v = 0; v < count; v++)
        {
            arcs.Add((root, v, n));
            for (int u = 0; u < count; u++)
            {
                int d = u == v ? 0 : FilterCode.Distance(nodes[u], nodes[v], n);
                if (u != v && d <= maxEdge)
                {
                    arcs.Add((u, v, d));
                }
            }
        }
        var model = new CpModel();
        var use = arcs.Select((a, i) => model.NewBoolVar($"x{i}")).ToArray();
        var flow = arcs.Select((a, i) => model.NewIntVar(0, terminals, $"f{i}")).ToArray();
        var into = Enumerable.Range(0, count + 1).Select(_ => new List<int>()).ToArray();
        var outOf = Enumerable.Range(0, count + 1).Select(_ => new List<int>()).ToArray();
        for (int i = 0; i < arcs.Count; i++)
        {
            into[arcs[i].To].Add(i);
            outOf[arcs[i].From].Add(i);
            model.Add(flow[i] <= terminals * use[i]);
        }
        for (int v = 0; v < count; v++)
        {
            var parentCount = LinearExpr.Sum(into[v].Select(i => use[i]));
            var net = LinearExpr.Sum(into[v].Select(i => flow[i])) - LinearExpr.Sum(outOf[v].Select(i => flow[i]));
            if (v < terminals)
            {
                // Each present class is reached once and keeps one unit of flow.
                model.Add(parentCount == 1);
                model.Add(net == 1);
            }
            else
            {
                // An intermediate has at most one parent, passes its flow on, and is used only if it has one.
                var used = model.NewBoolVar($"s{v}");
                model.Add(parentCount == used);
                model.Add(net == 0);
                foreach (int i in outOf[v])
                {
                    model.AddImplication(use[i], used);
                }
            }
        }
        model.Minimize(LinearExpr.WeightedSum(use, arcs.Select(a => (long)a.Cost)));
        var index = nodes.Select((code, i) => (code, i)).ToDictionary(p => p.code, p => p.i);
        var hinted = new HashSet<(int, int)>();
        for (int i = 0; i < mstCodes.Count; i++)
        {
            hinted.Add((mstParents[i] < 0 ? root : index[mstCodes[mstParents[i]]], index[mstCodes[i]]));
        }
        for (int i = 0; i < arcs.Count; i++)
        {
            model.AddHint(use[i], hinted.Contains((arcs[i].From, arcs[i].To)) ? 1 : 0);
        }
        var solver = new CpSolver
        {
            StringParameters = $"num_workers:8 interleave_search:true random_seed:1 max_deterministic_time:{SolverTimePerChannel}",
        };
        var status = solver.Solve(model);
        if (status is not (CpSolverStatus.Optimal or CpSolverStatus.Feasible))
        {
            return null;
        }
        var parentOf = Enumerable.Repeat(-2, count).ToArray();
        foreach (var i in Enumerable.Range(0, arcs.Count).Where(i => solver.BooleanValue(use[i])))
        {
            parentOf[arcs[i].To] = arcs[i].From == root ? -1 : arcs[i].From;
        }
        // Parents before children: breadth-first from the roots.
        var order = new List<int>();
        var queue = new Queue<int>(Enumerable.Range(0, count).Where(v => parentOf[v] == -1));
        while (queue.Count > 0)
        {
            int v = queue.Dequeue();
            order.Add(v);
            foreach (int child in Enumerable.Range(0, count).Where(c => parentOf[c] == v))
            {
                queue.Enqueue(child);
            }
        }
        if (Enumerable.Range(0, terminals).Any(t => !order.Contains(t)))
        {
            return null;
        }
        var position = new Dictionary<int, int>();
        for (int i = 0; i < order.Count; i++)
        {
            position[order[i]] = i;
        }
        return (order.Select(v => nodes[v]).ToList(), order.Select(v => parentOf[v] < 0 ? -1 : position[parentOf[v]]).ToArray());
    }
}
