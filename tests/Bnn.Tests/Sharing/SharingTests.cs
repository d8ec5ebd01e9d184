using Bnn.Cost;
using Bnn.Data;
using Bnn.Engine;
using Bnn.Engine.Reference;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Tests.Sharing;

public sealed class SharingTests
{
    /// <summary>A model whose 2-D filters come from a small per-layer codebook, so repeats, inverses and near neighbours abound.</summary>
    internal static BnnModel ClusteredModel(int seed, int padValue = 1, int codebook = 6)
    {
        var random = RandomModels.Create(
            [new ConvSpec(16, 3, 1, 1), new ConvSpec(33, 3, 2, 1), new PoolSpec(2), new ConvSpec(65, 3, 1, 0), new DenseSpec(12), new OutputSpec(10)],
            new Shape(3, 17, 17), seed, padValue);
        var rng = new Random(seed);
        var layers = random.Layers.Select(l => l is ConvLayer c ? Clustered(c, rng, codebook) : l).ToList();
        return random.WithLayers(layers);
    }

    private static ConvLayer Clustered(ConvLayer c, Random rng, int codebook)
    {
        int n = c.KernelH * c.KernelW;
        var book = Enumerable.Range(0, codebook).Select(_ => rng.Next(1 << n)).ToArray();
        var w = new sbyte[c.Weights.Length];
        for (int k = 0; k < c.OutChannels; k++)
        {
            for (int ch = 0; ch < c.InChannels; ch++)
            {
                int code = book[rng.Next(codebook)];
                code ^= rng.Next(3) == 0 ? 1 << rng.Next(n) : 0;      // a near neighbour
                code ^= rng.Next(4) == 0 ? FilterCode.Mask(n) : 0;    // an inverse
                for (int t = 0; t < n; t++)
                {
                    w[(((k * c.InChannels) + ch) * n) + t] = ((code >> t) & 1) != 0 ? (sbyte)-1 : (sbyte)1;
                }
            }
        }
        return c.With(w, c.Norm);
    }

    private static BnnModel Planned(BnnModel model, string mode, bool steiner = false) => model.WithPlans(Planner.PlanModel(model, mode, steiner));

    [Theory]
    [InlineData(Planner.Exact, 1, 1)]
    [InlineData(Planner.Exact, 2, -1)]
    [InlineData(Planner.ExactSimilar, 3, 1)]
    [InlineData(Planner.ExactSimilar, 4, -1)]
    [InlineData(Planner.ExactSimilar, 5, 0)]
    [InlineData("steiner", 6, 1)]
    public void SharedEngine_LosslessPlans_AreBitIdenticalToDenseEngines(string mode, int seed, int padValue)
    {
        var model = mode == "steiner" ? Planned(ClusteredModel(seed, padValue), Planner.ExactSimilar, steiner: true) : Planned(ClusteredModel(seed, padValue), mode);
        var images = TestData.RandomImages(4, seed, height: 17, width: 17);
        var dense = new PackedEngine(model).Run(images);
        var shared = new SharedEngine(model, selection: LayerSelection.Shared).Run(images, threads: 2);
        Assert.Equal(new ReferenceEngine(model).Run(images).Scores, dense.Scores);
        Assert.Equal(dense.Scores, shared.Scores);
    }

    [Fact]
    public void SharedEngine_Selection_ForcedRunsEveryStrideOneLayerShared_AutoRecordsMeasuredTimes()
    {
        var model = Planned(ClusteredModel(9), Planner.ExactSimilar);
        var forced = new SharedEngine(model, selection: LayerSelection.Shared);
        var auto = new SharedEngine(model);
        var convs = model.ConvLayers.ToList();
        Assert.Equal(convs.Select(p => p.Index), forced.Choices.Select(c => c.Layer));
        Assert.Equal(convs.Select(p => p.Layer.Stride == 1), forced.Choices.Select(c => c.Shared));
        foreach (var c in auto.Choices.Where(c => model.Layers[c.Layer] is ConvLayer { Stride: 1 }))
        {
            Assert.True(c.DenseMicroseconds > 0 && c.SharedMicroseconds > 0, c.Reason);
            Assert.Equal(c.SharedMicroseconds * PackedEngine.ImageMargin < c.DenseMicroseconds, c.Shared);
            Assert.StartsWith(c.Shared ? "shared: measured faster than dense" : "dense", c.Reason, StringComparison.Ordinal);
        }
        Assert.Contains(auto.Choices, c => c.Reason.StartsWith("dense: stride", StringComparison.Ordinal));
        var images = TestData.RandomImages(3, 9, height: 17, width: 17);
        Assert.Equal(forced.Run(images).Scores, auto.Run(images).Scores);
    }

    [Theory]
    [InlineData(Planner.Exact)]
    [InlineData(Planner.ExactSimilar)]
    [InlineData("steiner")]
    public void SharedEngine_Instrumented_CountsEqualTheCostModelExactly(string mode)
    {
        var model = mode == "steiner" ? Planned(ClusteredModel(7), Planner.ExactSimilar, steiner: true) : Planned(ClusteredModel(7), mode);
        var images = TestData.RandomImages(3, 8, height: 17, width: 17);
        var engine = new SharedEngine(model, instrumented: true);
        engine.Run(images, threads: 2);
        foreach (var (i, conv) in model.ConvLayers)
        {
            var output = model.OutputShapes[i];
            Assert.Equal(PlanCost.Of(model.Plans[i], output).TapOps * images.Count, engine.Counts.TapOps[i]);
            Assert.Equal(CostModel.AccumulateAdds(conv, output) * images.Count, engine.Counts.AccumulateAdds[i]);
        }
        int dense = model.Layers.Count - 2;
        Assert.Equal(CostModel.LayerTapOps(model, dense) * images.Count, engine.Counts.TapOps[dense]);
    }

    [Fact]
    public void SteinerPlan_ThreeClassesAroundAnUnusedCentre_DeriveThroughIt()
    {
        // Classes 1, 2 and 4 are pairwise 2 apart and 1 from the unused code 0: the MST costs 9 + 2 + 2 = 13 taps per
        // position, the Steiner forest 9 + 1 + 1 + 1 = 12 (through 0, or rooted at one class with 0 in between).
        var codes = new[] { 1, 2, 4, 2, 1 };
        var w = codes.SelectMany(code => Enumerable.Range(0, 9).Select(t => ((code >> t) & 1) != 0 ? (sbyte)-1 : (sbyte)1)).ToArray();
        var norm = BatchNormParameters.FromThreshold(new int[codes.Length], new bool[codes.Length]);
        var layer = new ConvLayer(codes.Length, 1, 3, 3, 1, 0, 1, false, w, norm);

        var mst = Planner.PlanExactSimilar(layer);
        var steiner = Planner.PlanExactSimilar(layer, steiner: true);

        steiner.Validate(layer, "test");
        Assert.Equal(13, Enumerable.Range(0, mst.Nodes.Count).Sum(mst.NodeCost));
        Assert.Equal(12, Enumerable.Range(0, steiner.Nodes.Count).Sum(steiner.NodeCost));
        Assert.Contains(steiner.Nodes, node => node.Code == 0);
        Assert.DoesNotContain(steiner.Assignment, a => steiner.Nodes[a].Code == 0);
    }

    [Fact]
    public void SteinerPlans_NeverCostMoreThanTheMst_AndStayAboveTheLowerBound()
    {
        var model = ClusteredModel(12, codebook: 10);
        foreach (var (i, conv) in model.ConvLayers)
        {
            var output = model.OutputShapes[i];
            long mst = PlanCost.Of(Planner.PlanExactSimilar(conv), output).TapOps;
            long steiner = PlanCost.Of(Planner.PlanExactSimilar(conv, steiner: true), output).TapOps;
            Assert.InRange(steiner, LayerAnalysis.Analyze(model, i).DerivationLowerBound * output.Height * output.Width, mst);
        }
    }

    [Fact]
    public void Plans_OnClusteredWeights_SaveWork_AndExactSimilarNeverCostsMore()
    {
        var model = ClusteredModel(9);
        foreach (var (i, conv) in model.ConvLayers)
        {
            var output = model.OutputShapes[i];
            var baseline = PlanCost.Baseline(conv, output);
            var exact = PlanCost.Of(Planner.PlanExact(conv), output);
            var similar = PlanCost.Of(Planner.PlanExactSimilar(conv), output);
            var analysis = LayerAnalysis.Analyze(model, i);
            Assert.Equal(analysis.DistinctClasses * conv.KernelH * conv.KernelW * output.Height * output.Width, exact.TapOps);
            Assert.True(exact.TapOps < baseline.TapOps);
            Assert.True(similar.TapOps <= exact.TapOps);
            Assert.True(similar.Conv2d <= exact.Conv2d);
        }
    }

    [Fact]
    public void ExactSimilar_HandWorkedChannel_IsTheMinimumForest()
    {
        // Classes 0b000000000, 0b000000001, 0b000000011 and 0b000000111, each one tap from the previous:
        // one root (9) and three corrections of one tap each.
        var classes = new List<int> { 0b000000000, 0b000000011, 0b000000001, 0b000000111 };
        var parents = Planner.MinimumForest(classes, 9);
        Assert.Equal(1, parents.Count(p => p < 0));
        int cost = 9;
        for (int i = 0; i < classes.Count; i++)
        {
            if (parents[i] >= 0)
            {
                Assert.True(parents[i] < i);
                cost += FilterCode.Distance(classes[i], classes[parents[i]], 9);
            }
        }
        Assert.Equal(12, cost);
    }

    [Fact]
    public void Analysis_HandBuiltLayer_CountsRepeatsInversesAndClasses()
    {
        // Channel 0 holds codes u, u, ~u, v with d(u, v) = 2: 2 classes, 1 repeat, 1 inverse.
        int u = 0b000010011, v = 0b000010000 | 0b101;
        int[] codes = [u, u, u ^ 0x1FF, v];
        var w = codes.SelectMany(code => Enumerable.Range(0, 9).Select(t => ((code >> t) & 1) != 0 ? (sbyte)-1 : (sbyte)1)).ToArray();
        var norm = new BatchNormParameters([1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], 0);
        var conv = new ConvLayer(4, 1, 3, 3, 1, 0, 0, true, w, norm);
        var model = new BnnModel(new Shape(1, 3, 3), [conv, new OutputLayer(4, 2, [1, 1, 1, 1, -1, -1, -1, -1], 1)]);
        var a = LayerAnalysis.Analyze(model, 0);
        Assert.Equal(2, a.DistinctClasses);
        Assert.Equal(1, a.Repeated);
        Assert.Equal(1, a.Inverse);
        Assert.Equal(1, a.ClassFrequencyHistogram[3]);
        Assert.Equal(1, a.ClassFrequencyHistogram[1]);
        Assert.Equal(2, a.NearestDistanceHistogram[FilterCode.Distance(u, v, 9)]);
    }

    [Fact]
    public void PlannedModel_SaveLoad_KeepsThePlan_AndRejectsATamperedOne()
    {
        using var dir = new TempDirectory();
        var model = Planned(ClusteredModel(5), Planner.ExactSimilar);
        ModelFile.Save(model, dir.File("s.bnn"));
        var loaded = ModelFile.Load(dir.File("s.bnn"));
        Assert.Equal(model.Plans.Keys.Order(), loaded.Plans.Keys.Order());
        var first = model.Plans.Keys.Min();
        Assert.Equal(model.Plans[first].Assignment, loaded.Plans[first].Assignment);
        Assert.Equal(model.Plans[first].Nodes, loaded.Plans[first].Nodes);

        // A plan whose node codes no longer reproduce the weights must not load.
        var plan = model.Plans[first];
        var nodes = plan.Nodes.Select((n, i) => i == 0 ? n with { Code = n.Code ^ 1 } : n).ToArray();
        var tampered = new LayerPlan(plan.Mode, plan.Taps, nodes, plan.Assignment, plan.Signs);
        var e = Assert.Throws<BnnDataException>(() => model.WithPlans(new Dictionary<int, LayerPlan> { [first] = tampered }));
        Assert.Contains("does not reproduce filter", e.Message);
    }
}
