using Bnn.Engine;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>Every alternative binary conv kernel writes exactly the bits the packed XNOR-popcount conv writes.</summary>
public sealed class ConvKernelTests
{
    public static readonly string[] Kernels = ["bit-sliced", "row-sum"];

    /// <summary>Whether <paramref name="kernel"/> runs <paramref name="layer"/> on this machine, and what each needs.</summary>
    private static bool Supports(string kernel, ConvLayer layer) => kernel switch
    {
        "bit-sliced" => BitSlicedConvStep.Supports(layer),
        "row-sum" => RowSumConvStep.Supports(layer),
        _ => throw new ArgumentOutOfRangeException(nameof(kernel)),
    };

    private static bool MachineHas(string kernel) => kernel switch
    {
        "bit-sliced" => System.Runtime.Intrinsics.X86.Avx512F.IsSupported,
        _ => System.Runtime.Intrinsics.X86.Avx512BW.IsSupported && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated
            && System.Runtime.Intrinsics.X86.Bmi2.X64.IsSupported,
    };

    private static PackedStep Create(string kernel, ConvLayer layer, Shape inShape, Shape outShape) => kernel switch
    {
        "bit-sliced" => new BitSlicedConvStep(layer, inShape, outShape),
        _ => new RowSumConvStep(layer, inShape, outShape),
    };

    public static TheoryData<string, int, int, int, int, int, int> Layers()
    {
        var data = new TheoryData<string, int, int, int, int, int, int>();
        foreach (string kernel in Kernels)
        {
            // (kernel, input channels, output channels, kernel size, image size, padding, pad value): channel counts at
            // word and octet edges, one vector of positions and several, valid and ±1-padded.
            foreach (int c in new[] { 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 129 })
            {
                data.Add(kernel, c, 65, 3, 9, 0, 1);
            }
            data.Add(kernel, 64, 64, 3, 30, 0, 1);   // the CNV's conv1: 840 flat positions, two vectors
            data.Add(kernel, 64, 1, 3, 30, 1, -1);
            data.Add(kernel, 17, 130, 3, 23, 1, 1);
            data.Add(kernel, 200, 64, 3, 12, 1, -1); // several channel blocks
            data.Add(kernel, 3, 3, 3, 3, 0, 1);      // one output position
            data.Add(kernel, 5, 9, 3, 40, 2, -1);    // wide padding, four vectors
        }
        // The row-sum conv takes kernel rows of 1 to 4 taps (1 to 8 stored patterns).
        foreach (int size in new[] { 1, 2, 4 })
        {
            data.Add("row-sum", 33, 70, size, 13, size / 2, -1);
            data.Add("row-sum", 66, 5, size, 11, size / 2, 1);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Layers))]
    public void Kernel_MatchesPackedConv(string kernel, int inChannels, int outChannels, int kernelSize, int size, int padding, int padValue)
    {
        // Given a binary conv with random weights and thresholds (some outputs flipped), on a random image
        var model = RandomModels.Create([new ConvSpec(inChannels, 3, 1, 0), new ConvSpec(outChannels, kernelSize, 1, padding), new OutputSpec(2)],
            new Shape(1, size + 2, size + 2), seed: inChannels + outChannels + size, padValue);
        var layer = (ConvLayer)model.Layers[1];
        // Without the instructions it needs, the engine must not take it (and there is nothing more to run here).
        Assert.Equal(MachineHas(kernel), Supports(kernel, layer));
        if (!Supports(kernel, layer))
        {
            return;
        }
        var inShape = model.InputShapes[1];
        var input = RandomBits(inShape, seed: size);
        var packed = new BinaryConvStep(layer, inShape, model.OutputShapes[1], PopCountKernel.Scalar);
        var expected = packed.Run(input, new ulong[packed.OutputWords], new ulong[packed.PaddedWords], new int[packed.AccumulatorCount]).ToArray();

        // When the kernel runs twice on reused scratch (garbage from the first image must not leak)
        var step = Create(kernel, layer, inShape, model.OutputShapes[1]);
        var scratch = new ulong[step.PaddedWords];
        var acc = new int[step.AccumulatorCount];
        step.Run(RandomBits(inShape, seed: size + 1), new ulong[step.OutputWords], scratch, acc);
        var output = Enumerable.Repeat(0xDEAD_BEEF_DEAD_BEEFUL, step.OutputWords).ToArray();
        step.Run(input, output, scratch, acc);

        // Then every output bit (and every padding bit) matches
        Assert.Equal(expected, output);
    }

    public static TheoryData<string, int, int, int, int> SplitLayers()
    {
        var data = new TheoryData<string, int, int, int, int>();
        foreach (string kernel in Kernels)
        {
            data.Add(kernel, 64, 30, 0, 1);
            data.Add(kernel, 5, 40, 2, -1);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(SplitLayers))]
    public void Kernel_InParts_WritesWhatTheWholeStepWrites(string kernel, int channels, int size, int padding, int padValue)
    {
        var model = RandomModels.Create([new ConvSpec(channels, 3, 1, 0), new ConvSpec(channels, 3, 1, padding), new OutputSpec(2)],
            new Shape(1, size + 2, size + 2), seed: size, padValue);
        var layer = (ConvLayer)model.Layers[1];
        if (!Supports(kernel, layer))
        {
            return;
        }
        var step = Create(kernel, layer, model.InputShapes[1], model.OutputShapes[1]);
        Assert.True(step.Splits);
        var input = RandomBits(model.InputShapes[1], seed: 3);
        var expected = step.Run(input, new ulong[step.OutputWords], new ulong[step.PaddedWords], new int[step.AccumulatorCount]).ToArray();
        foreach (int parts in new[] { 1, 2, 3, 5 })
        {
            // When the parts run last first, each with its own scratch, into a buffer full of garbage
            var output = Enumerable.Repeat(0xDEAD_BEEF_DEAD_BEEFUL, step.OutputWords).ToArray();
            var source = step.PrepareParts([], input, new ulong[step.PaddedWords]);
            for (int part = parts - 1; part >= 0; part--)
            {
                step.RunPart(source, output, new int[step.AccumulatorCount], part, parts);
            }

            // Then together they wrote every word the whole step wrote
            Assert.Equal(expected, output);
        }
    }

    [Fact]
    public void FastEngine_TimesBothConvKernels_OnlyWhenItChoosesTheKernel()
    {
        var model = RandomModels.Create([new ConvSpec(16, 3, 1, 0), new ConvSpec(32, 3, 1, 0), new ConvSpec(8, 3, 2, 0), new OutputSpec(3)],
            new Shape(3, 20, 20), seed: 5);

        // With Auto, every stride-1 binary 3x3 conv (layer 1, not the input layer or the stride-2 one) was timed both ways
        var auto = new PackedEngine(model);
        var timed = auto.ConvChoices.Select(c => c.Layer).ToArray();
        Assert.Equal(System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? [1] : Array.Empty<int>(), timed);
        Assert.All(auto.ConvChoices, c => Assert.True(c.PackedMicroseconds > 0 && c.BitSlicedMicroseconds > 0));

        // An explicit popcount kernel runs every conv packed with it: nothing is timed
        Assert.Empty(new PackedEngine(model, PopCountKernel.Scalar).ConvChoices);
    }

    /// <summary>Random activations in the packed layout, padding bits 0.</summary>
    private static ulong[] RandomBits(Shape shape, int seed)
    {
        var rng = new Random(seed);
        int words = BitConvention.Words(shape.Channels);
        var bits = new ulong[shape.Height * shape.Width * words];
        for (int i = 0; i < bits.Length; i++)
        {
            int valid = Math.Min(64, shape.Channels - ((i % words) * 64));
            bits[i] = (ulong)rng.NextInt64() & (valid == 64 ? ulong.MaxValue : (1UL << valid) - 1);
        }
        return bits;
    }
}
