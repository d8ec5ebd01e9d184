using Bnn.Engine;
using Bnn.Engine.Reference;
using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>The first-layer kernels (VNNI on raw pixels, the plane conv) against the reference, one layer at a time.</summary>
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

    private static void AssertStepMatchesReference(BnnModel model, PackedStep step)
    {
        var layer = (ConvLayer)model.Layers[0];
        var inShape = model.InputShapes[0];
        var outShape = model.OutputShapes[0];
        var images = TestData.RandomImages(3, layer.OutChannels, height: inShape.Height, width: inShape.Width);
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
                    Assert.Equal(BitConvention.Bit(expected[(k * outShape.Height * outShape.Width) + p]), bit);
                }
            }
        }
    }
}
