using Bnn.Engine;
using Bnn.Engine.Kernels;
using Bnn.Engine.Reference;
using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>Every engine gives bit-identical scores to the reference, and both match the float definition.</summary>
public sealed class EngineEquivalenceTests
{
    /// <summary>The engines under test, by name, built for a model.</summary>
    internal static IEnumerable<string> Names() => ["reference", .. XorPopCount.Supported.Select(k => "fast-" + k),
        .. System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? ["fast-bitsliced"] : Array.Empty<string>(), "shared-exact", "shared-exact-similar"];

    public static TheoryData<string> EngineNames() => new(Names());

    internal static IEngine Create(string name, BnnModel model) => name switch
    {
        "reference" => new ReferenceEngine(model),
        // Every binary conv the bit-sliced conv supports runs bit-sliced, whatever would be faster here.
        "fast-bitsliced" => new PackedEngine(model, XorPopCount.Best, model.ConvLayers.Where(c => BitSlicedConvStep.Supports(c.Layer))
            .ToDictionary(c => c.Index, c => (PackedStep)new BitSlicedConvStep(c.Layer, model.InputShapes[c.Index], model.OutputShapes[c.Index])), chooseConvs: false),
        _ when name.StartsWith("fast-", StringComparison.Ordinal) => new PackedEngine(model, Enum.Parse<PopCountKernel>(name[5..])),
        // Every layer the plane conv supports runs shared, whatever would be faster here.
        "shared-exact" => new SharedEngine(model, selection: LayerSelection.Shared),
        "shared-exact-similar" => new SharedEngine(model.WithPlans(Bnn.Sharing.Planner.PlanModel(model, Bnn.Sharing.Planner.ExactSimilar)), selection: LayerSelection.Shared),
        _ => throw new ArgumentException(name),
    };

    public static TheoryData<string, int> EnginesByChannels()
    {
        var data = new TheoryData<string, int>();
        foreach (var engine in Names())
        {
            foreach (var c in new[] { 1, 3, 31, 32, 33, 63, 64, 65, 127, 128, 129 })
            {
                data.Add(engine, c);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(EnginesByChannels))]
    public void Engine_ChannelCountsAtWordEdges_MatchReferenceAndFloat(string engineName, int channels)
    {
        // Given a network whose binary layers have `channels` inputs and outputs
        var model = RandomModels.Create(
            [new ConvSpec(channels, 3, 1, 0), new ConvSpec(channels, 3, 1, 1), new ConvSpec(channels, 3, 2, 0), new DenseSpec(channels), new OutputSpec(10)],
            new Shape(3, 9, 9), seed: channels);
        var images = TestData.RandomImages(4, seed: 7, height: 9, width: 9);

        // When both engines score the images
        AssertMatches(Create(engineName, model), images);
    }

    public static TheoryData<string, int, int, int, int, int> EnginesByGeometry()
    {
        var data = new TheoryData<string, int, int, int, int, int>();
        foreach (var engine in Names())
        {
            // (size, stride, padding, pad value, seed): odd and even sizes, padding on and off, stride 1 and 2.
            data.Add(engine, 7, 1, 0, 1, 1);
            data.Add(engine, 7, 1, 1, 1, 2);
            data.Add(engine, 7, 1, 1, -1, 3);
            data.Add(engine, 11, 2, 0, 1, 4);
            data.Add(engine, 11, 2, 1, -1, 5);
            data.Add(engine, 12, 2, 1, 1, 6);
            data.Add(engine, 13, 1, 2, -1, 7);
            data.Add(engine, 7, 1, 1, 0, 8); // zero padding, as imported ONNX convs pad
            data.Add(engine, 12, 2, 2, 0, 9);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(EnginesByGeometry))]
    public void Engine_SpatialGeometries_MatchReferenceAndFloat(string engineName, int size, int stride, int padding, int padValue, int seed)
    {
        var model = RandomModels.Create(
            [new ConvSpec(5, 3, stride, padding), new ConvSpec(70, 3, 1, padding), new PoolSpec(2), new ConvSpec(33, 3, 1, padding), new OutputSpec(7)],
            new Shape(2, size + 8, size + 8), seed, padValue);
        var images = TestData.RandomImages(3, seed, channels: 2, height: size + 8, width: size + 8, classes: 7);
        AssertMatches(Create(engineName, model), images);
    }

    public static TheoryData<string, int, int> EnginesBySmallOutputs()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var engine in Names())
        {
            // The last conv's output: 1, 2, 3, 4, 5, 6 and 7 positions, so that the conv kernel's groups of four end
            // in every remainder, and a lone position.
            foreach (var (h, w) in new[] { (3, 3), (3, 4), (3, 5), (4, 4), (3, 7), (4, 5), (3, 9) })
            {
                data.Add(engine, h, w);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(EnginesBySmallOutputs))]
    public void Engine_FewOutputPositions_MatchReferenceAndFloat(string engineName, int height, int width)
    {
        var model = RandomModels.Create([new ConvSpec(16, 1, 1, 0), new ConvSpec(72, 3, 1, 0), new OutputSpec(6)], new Shape(3, height, width), seed: (height * 10) + width);
        var images = TestData.RandomImages(3, seed: width, height: height, width: width, classes: 6);
        AssertMatches(Create(engineName, model), images);
    }

    [Theory]
    [MemberData(nameof(EngineNames))]
    public void Engine_CnvShapedModel_MatchesReferenceWithThreads(string engineName)
    {
        var model = RandomModels.Create(Architectures.Build("cnv", 0.25), new Shape(3, 32, 32), seed: 11);
        var images = TestData.RandomImages(6, seed: 12);
        var reference = new ReferenceEngine(model).Run(images);
        var engine = Create(engineName, model);
        Assert.Equal(reference.Scores, engine.Run(images, threads: 1).Scores);
        Assert.Equal(reference.Scores, engine.Run(images, threads: 2).Scores);
    }

    [Theory]
    [InlineData(100)]   // sums fit int16: the packed input layer uses 16-bit lanes
    [InlineData(5000)]  // they do not: 32-bit lanes
    public void Engines_CustomPixelLevels_MatchReferenceAndFloat(int spread)
    {
        var random = RandomModels.Create([new ConvSpec(20, 3, 1, 1), new ConvSpec(9, 3, 1, 0), new OutputSpec(5)], new Shape(3, 8, 8), seed: spread);
        var first = (ConvLayer)random.Layers[0];
        var rng = new Random(spread);
        var levels = Enumerable.Range(0, 3 * 256).Select(_ => rng.Next(-spread, spread + 1)).ToArray();
        var layer = new ConvLayer(first.OutChannels, first.InChannels, 3, 3, 1, 1, 0, true, first.Weights, first.Norm, levels);
        var model = random.WithLayers([layer, .. random.Layers.Skip(1)]);
        var images = TestData.RandomImages(5, spread, height: 8, width: 8, classes: 5);
        foreach (var name in Names())
        {
            AssertMatches(Create(name, model), images);
        }
        var shared = new SharedEngine(model.WithPlans(Bnn.Sharing.Planner.PlanModel(model, Bnn.Sharing.Planner.ExactSimilar)));
        Assert.Equal(new ReferenceEngine(model).Run(images).Scores, shared.Run(images).Scores);
    }

    [Fact]
    public void FastEngine_RepeatedRuns_ReuseWorkspacesAndStayIdentical()
    {
        var model = TestData.SmallModel(3);
        var engine = new PackedEngine(model);
        var images = TestData.RandomImages(5, 4);
        var first = engine.Run(images, threads: 2);
        var second = engine.Run(images, threads: 2);
        Assert.Equal(first.Scores, second.Scores);
    }

    private static void AssertMatches(IEngine engine, Bnn.Data.ImageSet images)
    {
        var reference = new ReferenceEngine(engine.Model).Run(images);
        var actual = engine.Run(images);
        Assert.Equal(reference.Scores, actual.Scores);
        Assert.Equal(reference.Predictions, actual.Predictions);
        // One image per call with two threads: the packed engines split each image's layers across them.
        var oneByOne = new int[actual.Scores.Length];
        for (int i = 0; i < images.Count; i++)
        {
            engine.Score(images, i, 1, oneByOne.AsSpan(i * engine.Model.Classes, engine.Model.Classes), threads: 2);
        }
        Assert.Equal(reference.Scores, oneByOne);
        for (int i = 0; i < images.Count; i++)
        {
            var expected = FloatReference.Scores(engine.Model, images.Image(i)).Select(v => (int)v).ToArray();
            Assert.Equal(expected, actual.Scores.AsSpan(i * engine.Model.Classes, engine.Model.Classes).ToArray());
        }
        // The scores must not be degenerate, or the comparison proves little.
        Assert.True(actual.Scores.Distinct().Count() > 1, "all scores equal: the random model is degenerate");
    }
}
