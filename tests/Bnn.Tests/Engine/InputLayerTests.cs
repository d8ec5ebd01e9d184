using Bnn.Engine;
using Bnn.Engine.Reference;
using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>The first-layer kernels (row sums, VNNI on raw pixels, the plane conv) against the reference, one layer at a time.</summary>
public sealed class InputLayerTests
{
    // (filters, kernel, stride, image size): 1, 2, 3, 5 and 8 blocks of 8 filters; 3x3 and 5x5 kernels; odd output widths.
    private static readonly (int Filters, int Kernel, int Stride, int Size)[] Cases = [(8, 3, 1, 9), (16, 3, 2, 11), (24, 5, 1, 12), (40, 3, 1, 10), (64, 3, 1, 32)];

    public static TheoryData<int, int, int, int> AllShapes() => Data(Cases);

    public static TheoryData<int, int, int, int> StrideOneShapes() => Data(Cases.Where(c => c.Stride == 1));

    private static TheoryData<int, int, int, int> Data(IEnumerable<(int, int, int, int)> cases)
    {
        var data = new TheoryData<int, int, int, int>();
        foreach (var (f, k, s, n) in cases)
        {
            data.Add(f, k, s, n);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(AllShapes))]
    public void VnniInputStep_MatchesReference_OrIsDeclinedWithoutAvx2(int filters, int kernel, int stride, int size)
    {
        // Zero padding where the stride is 1 (the border correction), none otherwise.
        int padding = stride == 1 ? kernel / 2 : 0;
        var model = RandomModels.Create([new ConvSpec(filters, kernel, stride, padding), new OutputSpec(5)], new Shape(3, size, size), seed: filters + size);
        var layer = (ConvLayer)model.Layers[0];
        // AVX-VNNI's instruction or, without it (Zen 4; DOTNET_EnableAVXVNNI=0), its AVX2 equivalent. Without AVX2 (or with
        // DOTNET_EnableHWIntrinsic=0) the step must decline, so the engine falls back.
        Assert.Equal(System.Runtime.Intrinsics.X86.Avx2.IsSupported, VnniInputConvStep.Supports(layer));
        if (VnniInputConvStep.Supports(layer))
        {
            AssertStepMatchesReference(model, new VnniInputConvStep(layer, model.InputShapes[0], model.OutputShapes[0]));
        }
    }

    [Theory]
    [MemberData(nameof(AllShapes))]
    [InlineData(8, 1, 1, 7)]    // 1x1: one tap per row, two patterns
    [InlineData(16, 2, 1, 9)]
    [InlineData(72, 4, 1, 10)]  // 4 taps per row (16 patterns) and a partly filled second word of filters
    public void RowSumInputStep_MatchesReference_OrIsDeclined(int filters, int kernel, int stride, int size)
    {
        foreach (int channels in new[] { 1, 3, 4 })
        {
            foreach (int padding in new[] { 0, kernel / 2 })
            {
                var model = RandomModels.Create([new ConvSpec(filters, kernel, stride, padding), new OutputSpec(5)], new Shape(channels, size, size), seed: filters + size + channels);
                var layer = (ConvLayer)model.Layers[0];
                // It needs AVX2 or AVX-512BW, stride 1 and rows of at most 4 taps; elsewhere the engine falls back.
                bool expected = RowSumInputConvStep.Widths.Count > 0 && stride == 1 && kernel <= 4;
                Assert.Equal(expected, RowSumInputConvStep.Supports(layer));
                if (expected)
                {
                    AssertEveryRowSumWidthMatchesReference(model);
                }
            }
        }
    }

    [Theory]
    [InlineData(1213, true)]    // 1213 · 27 = 32,751: every sum still fits 16 bits
    [InlineData(1214, false)]   // 32,778 does not
    public void RowSumInputStep_CustomLevels_MatchReference_UpToThe16BitLimit(int largest, bool supported)
    {
        var random = RandomModels.Create([new ConvSpec(24, 3, 1, 1), new OutputSpec(5)], new Shape(3, 9, 9), seed: largest);
        var first = (ConvLayer)random.Layers[0];
        var rng = new Random(largest);
        var levels = Enumerable.Range(0, 3 * 256).Select(i => i == 77 ? -largest : rng.Next(-largest, largest + 1)).ToArray();
        var layer = new ConvLayer(first.OutChannels, first.InChannels, 3, 3, 1, 1, 0, true, first.Weights, first.Norm, levels);
        var model = random.WithLayers([layer, .. random.Layers.Skip(1)]);
        if (RowSumInputConvStep.Widths.Count == 0)
        {
            Assert.False(RowSumInputConvStep.Supports(layer));
            return;
        }
        Assert.Equal(supported, RowSumInputConvStep.Supports(layer));
        if (supported)
        {
            AssertEveryRowSumWidthMatchesReference(model);
        }
    }

    [Fact]
    public void RowSumInputStep_ScratchMoved_BetweenPrepareAndParts_OrBetweenImages_StillMatches()
    {
        // The step aligns its planes to the scratch array's address and records where in word 0. Parts that read a
        // copy at another address (as after a compacting collection) must find the same planes, and the next image
        // prepared in that copy must find zero borders where its planes now start.
        var model = RandomModels.Create([new ConvSpec(64, 3, 1, 1), new OutputSpec(5)], new Shape(3, 32, 32), seed: 5);
        var layer = (ConvLayer)model.Layers[0];
        foreach (bool wide in RowSumInputConvStep.Widths)
        {
            AssertMovedScratchMatches(model, new RowSumInputConvStep(layer, model.InputShapes[0], model.OutputShapes[0], wide));
        }
    }

    private static void AssertMovedScratchMatches(BnnModel model, RowSumInputConvStep step)
    {
        var images = TestData.RandomImages(2, 5, height: 32, width: 32);
        var expected = Enumerable.Range(0, 2).Select(i => step.RunPixels(images.Image(i), new ulong[step.OutputWords], new ulong[step.PaddedWords], new int[1]).ToArray()).ToArray();
        var garbage = new List<ulong[]>();
        int moves = 0;
        for (int shift = 1; shift < 8; shift++)
        {
            var prepared = step.PrepareParts(images.Image(0), [], new ulong[step.PaddedWords]);
            // The same words in a new array, after `shift` words of other allocations: usually another alignment.
            garbage.Add(new ulong[shift]);
            var moved = (ulong[])prepared.Clone();
            moves += LineOffset(moved) != LineOffset(prepared) ? 1 : 0;
            var output = new ulong[step.OutputWords];
            step.RunPart(moved, output, new int[1], 0, 1);
            Assert.Equal(expected[0], output);
            Assert.Equal(expected[1], step.RunPixels(images.Image(1), output, moved, new int[1]).ToArray());
        }
        Assert.True(moves > 0, "no copy landed at another alignment: the test proved nothing");
    }

    private static unsafe long LineOffset(ulong[] words)
    {
        fixed (ulong* p = words)
        {
            return (long)p % 64;
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void VnniInputStep_ConstantAndOutOfRangeChannels_MatchReference(int padding)
    {
        // The VNNI step folds the pixel-code constant and the border correction into its bounds: constant channels
        // (γ = 0, bound int.MinValue, either sign) and bounds beyond any reachable sum must survive that.
        var model = RandomModels.Create([new ConvSpec(16, 3, 1, padding), new OutputSpec(5)], new Shape(3, 10, 10), seed: 11 + padding);
        var layer = (ConvLayer)model.Layers[0];
        var norm = layer.Norm;
        var gamma = (float[])norm.Gamma.Clone();
        var beta = (float[])norm.Beta.Clone();
        var mean = (float[])norm.Mean.Clone();
        (gamma[0], beta[0]) = (0, 0.5f);
        (gamma[1], beta[1]) = (0, -0.5f);
        (gamma[2], mean[2]) = (1, 1e9f);
        (gamma[3], mean[3]) = (-1, 1e9f);
        (gamma[4], mean[4]) = (1, -1e9f);
        (gamma[5], mean[5]) = (-1, -1e9f);
        var changed = layer.With(layer.Weights, norm with { Gamma = gamma, Beta = beta, Mean = mean });
        var edited = model.WithLayers([changed, .. model.Layers.Skip(1)]);
        if (VnniInputConvStep.Supports(changed))
        {
            AssertStepMatchesReference(edited, new VnniInputConvStep(changed, edited.InputShapes[0], edited.OutputShapes[0]));
        }
        // The row-sum step clamps bounds to 16 bits: beyond every reachable sum they must still decide alike.
        if (RowSumInputConvStep.Supports(changed))
        {
            AssertEveryRowSumWidthMatchesReference(edited);
        }
        AssertStepMatchesReference(edited, new InputConvStep(changed, edited.InputShapes[0], edited.OutputShapes[0]));
    }

    [Theory]
    [MemberData(nameof(StrideOneShapes))]
    public void DensePlaneInputStep_MatchesReference(int filters, int kernel, int stride, int size)
    {
        var model = RandomModels.Create([new ConvSpec(filters, kernel, stride, 1), new OutputSpec(5)], new Shape(3, size, size), seed: filters * size);
        var layer = (ConvLayer)model.Layers[0];
        AssertStepMatchesReference(model, PlaneConvStep.Create(layer, Bnn.Sharing.Planner.PlanDense(layer), model.InputShapes[0], model.OutputShapes[0]));
    }

    /// <summary>The row-sum step of the model's first layer in each vector width this CPU runs, against the reference.</summary>
    private static void AssertEveryRowSumWidthMatchesReference(BnnModel model)
    {
        Assert.NotEmpty(RowSumInputConvStep.Widths);
        foreach (bool wide in RowSumInputConvStep.Widths)
        {
            AssertStepMatchesReference(model, new RowSumInputConvStep((ConvLayer)model.Layers[0], model.InputShapes[0], model.OutputShapes[0], wide));
        }
    }

    private static void AssertStepMatchesReference(BnnModel model, PackedStep step)
    {
        var layer = (ConvLayer)model.Layers[0];
        var inShape = model.InputShapes[0];
        var outShape = model.OutputShapes[0];
        var images = TestData.RandomImages(3, layer.OutChannels, channels: inShape.Channels, height: inShape.Height, width: inShape.Width);
        var output = new ulong[step.OutputWords];
        var scratch = new ulong[step.PaddedWords];
        var acc = new int[Math.Max(1, step.AccumulatorCount)];
        for (int i = 0; i < images.Count; i++)
        {
            var levels = new int[inShape.Size];
            PixelCode.EncodeImage(layer, images.Image(i), levels);
            var expected = ReferenceEngine.Binarize(ReferenceEngine.Conv(layer, levels, inShape, outShape), layer.Threshold, outShape.Height * outShape.Width);
            step.RunPixels(images.Image(i), output, scratch, acc);
            int words = BitConvention.Words(outShape.Channels);
            for (int k = 0; k < outShape.Channels; k++)
            {
                for (int p = 0; p < outShape.Height * outShape.Width; p++)
                {
                    ulong bit = (output[(p * words) + (k / 64)] >> (k % 64)) & 1;
                    Assert.True(BitConvention.Bit(expected[(k * outShape.Height * outShape.Width) + p]) == bit, $"image {i}, filter {k}, position {p}");
                }
            }
        }
    }
}
