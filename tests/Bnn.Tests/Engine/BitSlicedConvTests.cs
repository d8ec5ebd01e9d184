using Bnn.Engine;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>The bit-sliced conv writes exactly the bits the packed XNOR-popcount conv writes.</summary>
public sealed class BitSlicedConvTests
{
    public static TheoryData<int, int, int, int, int> Layers()
    {
        var data = new TheoryData<int, int, int, int, int>();
        // (input channels, output channels, size, padding, pad value): channel counts at word and octet edges, one
        // vector of positions and several, valid and ±1-padded.
        foreach (int c in new[] { 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 129 })
        {
            data.Add(c, 65, 9, 0, 1);
        }
        data.Add(64, 64, 30, 0, 1);   // the CNV's conv1: 840 flat positions, two vectors
        data.Add(64, 1, 30, 1, -1);
        data.Add(17, 130, 23, 1, 1);
        data.Add(200, 64, 12, 1, -1); // several channel blocks
        data.Add(3, 3, 3, 0, 1);      // one output position
        data.Add(5, 9, 40, 2, -1);    // wide padding, four vectors
        return data;
    }

    [Theory]
    [MemberData(nameof(Layers))]
    public void BitSliced_MatchesPackedConv(int inChannels, int outChannels, int size, int padding, int padValue)
    {
        // Given a binary conv with random weights and thresholds (some outputs flipped), on a random image
        var model = RandomModels.Create([new ConvSpec(inChannels, 3, 1, 0), new ConvSpec(outChannels, 3, 1, padding), new OutputSpec(2)],
            new Shape(1, size + 2, size + 2), seed: inChannels + outChannels + size, padValue);
        var layer = (ConvLayer)model.Layers[1];
        // The step needs AVX-512F; without it the engine must not take it (and there is nothing more to run here).
        Assert.Equal(System.Runtime.Intrinsics.X86.Avx512F.IsSupported, BitSlicedConvStep.Supports(layer));
        if (!BitSlicedConvStep.Supports(layer))
        {
            return;
        }
        var inShape = model.InputShapes[1];
        var input = RandomBits(inShape, seed: size);
        var packed = new BinaryConvStep(layer, inShape, model.OutputShapes[1], PopCountKernel.Scalar);
        var expected = packed.Run(input, new ulong[packed.OutputWords], new ulong[packed.PaddedWords], new int[packed.AccumulatorCount]).ToArray();

        // When the bit-sliced conv runs twice on reused scratch (garbage from the first image must not leak)
        var sliced = new BitSlicedConvStep(layer, inShape, model.OutputShapes[1]);
        var scratch = new ulong[sliced.PaddedWords];
        var acc = new int[sliced.AccumulatorCount];
        sliced.Run(RandomBits(inShape, seed: size + 1), new ulong[sliced.OutputWords], scratch, acc);
        var output = Enumerable.Repeat(0xDEAD_BEEF_DEAD_BEEFUL, sliced.OutputWords).ToArray();
        sliced.Run(input, output, scratch, acc);

        // Then every output bit (and every padding bit) matches
        Assert.Equal(expected, output);
    }

    [Theory]
    [InlineData(64, 30, 0, 1)]
    [InlineData(5, 40, 2, -1)]
    public void BitSliced_InParts_WritesWhatTheWholeStepWrites(int channels, int size, int padding, int padValue)
    {
        var model = RandomModels.Create([new ConvSpec(channels, 3, 1, 0), new ConvSpec(channels, 3, 1, padding), new OutputSpec(2)],
            new Shape(1, size + 2, size + 2), seed: size, padValue);
        var layer = (ConvLayer)model.Layers[1];
        if (!BitSlicedConvStep.Supports(layer))
        {
            return;
        }
        var sliced = new BitSlicedConvStep(layer, model.InputShapes[1], model.OutputShapes[1]);
        Assert.True(sliced.Splits);
        var input = RandomBits(model.InputShapes[1], seed: 3);
        var expected = sliced.Run(input, new ulong[sliced.OutputWords], new ulong[sliced.PaddedWords], new int[sliced.AccumulatorCount]).ToArray();
        foreach (int parts in new[] { 1, 2, 3, 5 })
        {
            // When the parts run last first, each with its own scratch, into a buffer full of garbage
            var output = Enumerable.Repeat(0xDEAD_BEEF_DEAD_BEEFUL, sliced.OutputWords).ToArray();
            var source = sliced.PrepareParts([], input, new ulong[sliced.PaddedWords]);
            for (int part = parts - 1; part >= 0; part--)
            {
                sliced.RunPart(source, output, new int[sliced.AccumulatorCount], part, parts);
            }

            // Then together they wrote every word the whole step wrote
            Assert.Equal(expected, output);
        }
    }

    [Fact]
    public void WordsToLine_SkipsToTheNextCacheLine()
    {
        // Pinned arrays at whatever 8-byte offsets the allocator gives: the skip lands on a 64-byte line, within 7 words
        for (int n = 1; n <= 40; n++)
        {
            var words = GC.AllocateArray<ulong>(n + 8, pinned: true);
            int skip = PackedStep.WordsToLine(ref words[0]);
            Assert.InRange(skip, 0, 7);
            Assert.Equal(0, System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(words, skip) % 64);
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
        // The bit-sliced conv runs exactly where a whole image ran enough faster with it
        Assert.All(auto.ConvChoices, c => Assert.Equal(c.BitSlicedMicroseconds * PackedEngine.ImageMargin < c.PackedMicroseconds, c.BitSliced));

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
