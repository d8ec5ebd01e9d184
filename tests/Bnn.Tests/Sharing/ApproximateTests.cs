using Bnn.Engine;
using Bnn.Engine.Reference;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Tests.Sharing;

public sealed class ApproximateTests
{
    [Theory]
    [InlineData(1, 11)]
    [InlineData(2, 12)]
    public void Cover_IsMinimal_ByBruteForceOnFourTapFilters(int radius, int seed)
    {
        // n = 4 has 8 classes, so every subset of candidates can be tried.
        const int n = 4;
        var rng = new Random(seed);
        for (int trial = 0; trial < 20; trial++)
        {
            var classes = Enumerable.Range(0, 8).Where(_ => rng.Next(2) == 0).ToList();
            if (classes.Count == 0)
            {
                continue;
            }
            var cover = ApproximatePlanner.Cover(classes, n, radius);
            Assert.True(cover.Optimal);
            Assert.All(classes, c => Assert.Contains(cover.Representatives, r => FilterCode.Distance(c, r, n) <= radius));
            int best = Enumerable.Range(1, 255).Where(mask => classes.All(c => Enumerable.Range(0, 8).Any(j => ((mask >> j) & 1) != 0 && FilterCode.Distance(c, j, n) <= radius)))
                .Min(mask => System.Numerics.BitOperations.PopCount((uint)mask));
            Assert.Equal(best, cover.Representatives.Length);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Merge_MovesEveryFilterAtMostRadius_AndShrinksClasses(int radius)
    {
        var model = SharingTests.ClusteredModel(3, codebook: 40);
        var (i, conv) = model.ConvLayers.Skip(1).First();
        var (merged, optimal) = ApproximatePlanner.Merge(conv, radius);
        Assert.InRange(optimal, 0, conv.InChannels);
        int n = conv.KernelH * conv.KernelW;
        for (int k = 0; k < conv.OutChannels; k++)
        {
            for (int c = 0; c < conv.InChannels; c++)
            {
                Assert.True(FilterCode.Hamming(FilterCode.Code(conv, k, c), FilterCode.Code(merged, k, c)) <= radius);
            }
        }
        var before = LayerAnalysis.Analyze(model, i).DistinctClasses;
        var layers = model.Layers.ToList();
        layers[i] = merged;
        var after = LayerAnalysis.Analyze(model.WithLayers(layers), i).DistinctClasses;
        Assert.True(after < before, $"{after} classes after merging, {before} before");
    }

    [Fact]
    public void Search_FixedRadius_ResultRunsIdenticallyOnSharedAndDenseEngines()
    {
        var model = SharingTests.ClusteredModel(4, codebook: 30);
        var validation = TestData.RandomImages(30, 5, height: 17, width: 17);
        var calibration = TestData.RandomImages(30, 6, height: 17, width: 17);
        var result = ApproximateSearch.Run(model, validation, calibration, maxLoss: 1.0, fixedRadius: 1);
        var dense = new PackedEngine(result.Model).Run(validation).Scores;
        var shared = new SharedEngine(result.Model).Run(validation).Scores;
        Assert.Equal(dense, shared);
        Assert.All(result.Radii.Values, r => Assert.Equal(1, r));
        Assert.True(ApproximateSearch.Conv2dSaving(model, result.Model) > ApproximateSearch.Conv2dSaving(model, model));
    }

    [Fact]
    public void Search_ZeroBudget_KeepsOnlyChangesThatLoseNothing()
    {
        var model = SharingTests.ClusteredModel(8, codebook: 30);
        var validation = TestData.RandomImages(40, 9, height: 17, width: 17);
        var result = ApproximateSearch.Run(model, validation, null, maxLoss: 0, fixedRadius: null, maxRadius: 1);
        Assert.True(result.BaselineAccuracy - result.MergedAccuracy <= 0);
        Assert.Equal(result.MergedAccuracy, ApproximateSearch.Accuracy(result.Model, validation, 1));
    }

    [Fact]
    public void Search_AnnouncesEachMergeItComputes_AndNoneTheCacheAlreadyHolds()
    {
        var model = SharingTests.ClusteredModel(8, codebook: 30);
        var validation = TestData.RandomImages(20, 9, height: 17, width: 17);
        var cache = new MergeCache();
        var first = new LinesProgress();
        ApproximateSearch.Run(model, validation, null, maxLoss: 0, fixedRadius: null, maxRadius: 1, log: first, cache: cache);
        int convs = model.ConvLayers.Count(p => FilterCode.Supports(p.Layer));
        var merging = first.Lines.Where(l => l.Contains(": merging ", StringComparison.Ordinal)).ToList();
        Assert.Equal(convs, merging.Count);
        Assert.All(model.ConvLayers.Where(p => FilterCode.Supports(p.Layer)), p =>
            Assert.Contains($"conv{p.Index} radius 1: merging {p.Layer.InChannels} channels", merging));
        var second = new LinesProgress();
        ApproximateSearch.Run(model, validation, null, maxLoss: 0, fixedRadius: null, maxRadius: 1, log: second, cache: cache);
        Assert.DoesNotContain(second.Lines, l => l.Contains(": merging ", StringComparison.Ordinal));
    }

    private sealed class LinesProgress : IProgress<string>
    {
        public List<string> Lines { get; } = [];

        public void Report(string value) => Lines.Add(value);
    }

    [Fact]
    public void Recalibrate_SetsEachLayersStatisticsToItsAccumulatorMoments()
    {
        var model = TestData.SmallModel(7);
        var images = TestData.RandomImages(12, 3);
        var recalibrated = Recalibration.Recalibrate(model, images, threads: 2);
        // Layer 0 sees pixels only, so its statistics can be checked against the reference accumulators directly.
        var conv = (ConvLayer)model.Layers[0];
        var outShape = model.OutputShapes[0];
        int positions = outShape.Height * outShape.Width;
        var sums = new double[conv.OutChannels];
        var squares = new double[conv.OutChannels];
        for (int i = 0; i < images.Count; i++)
        {
            var x = images.Image(i).ToArray().Select(p => PixelCode.Encode(p)).ToArray();
            var acc = ReferenceEngine.Conv(conv, x, model.InputShapes[0], outShape);
            for (int j = 0; j < acc.Length; j++)
            {
                sums[j / positions] += acc[j];
                squares[j / positions] += (double)acc[j] * acc[j];
            }
        }
        var norm = ((ConvLayer)recalibrated.Layers[0]).Norm;
        for (int k = 0; k < conv.OutChannels; k++)
        {
            double mean = sums[k] / (images.Count * positions);
            Assert.Equal((float)mean, norm.Mean[k]);
            Assert.Equal((float)((squares[k] / (images.Count * positions)) - (mean * mean)), norm.Variance[k], 2f);
            Assert.Equal(conv.Norm.Gamma[k], norm.Gamma[k]);
        }
    }
}
