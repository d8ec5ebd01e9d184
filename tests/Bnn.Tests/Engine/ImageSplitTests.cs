using Bnn.Engine;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>A step run in parts (one image across threads) writes exactly what the whole step writes.</summary>
public sealed class ImageSplitTests
{
    public static TheoryData<int, int> Geometries() => new()
    {
        // (padding, seed): valid convs like the CNV's, and ±1-padded ones like BinaryNet-VGG's.
        { 0, 1 },
        { 1, 2 },
    };

    [Theory]
    [MemberData(nameof(Geometries))]
    public void SplittingSteps_InAnyNumberOfParts_WriteWhatTheWholeStepWrites(int padding, int seed)
    {
        // Given a network of 2 to 255 output positions per layer, with the kernels the machine has
        var model = RandomModels.Create(
            [new ConvSpec(64, 3, 1, padding), new ConvSpec(65, 3, 1, padding), new PoolSpec(2), new ConvSpec(33, 3, 1, padding), new ConvSpec(8, 3, 1, padding), new OutputSpec(4)],
            new Shape(3, 17, 15), seed);
        var pixels = TestData.RandomImages(1, seed, height: 17, width: 15, classes: 4).Image(0).ToArray();
        var input = Array.Empty<ulong>();
        int split = 0;
        for (int l = 0; l < model.Layers.Count - 1; l++)
        {
            var step = PackedEngine.Compile(model.Layers[l], model.InputShapes[l], model.OutputShapes[l], XorPopCount.Best, fastInput: true);
            int accumulators = Math.Max(1, step.AccumulatorCount);
            var whole = new ulong[step.OutputWords];
            var padded = new ulong[step.PaddedWords];
            var acc = new int[accumulators];
            var expected = (step.TakesPixels ? step.RunPixels(pixels, whole, padded, acc) : step.Run(input, whole, padded, acc)).ToArray();
            if (step.Splits)
            {
                split++;
                foreach (int parts in new[] { 1, 2, 3, 5 })
                {
                    // When the parts run one after another into a buffer full of garbage, last part first
                    var output = Enumerable.Repeat(0xDEAD_BEEF_DEAD_BEEFUL, step.OutputWords).ToArray();
                    var source = step.PrepareParts(pixels, input, new ulong[step.PaddedWords]);
                    for (int part = parts - 1; part >= 0; part--)
                    {
                        step.RunPart(source, output, new int[accumulators], part, parts);
                    }

                    // Then together they wrote every word, as the whole step did
                    Assert.Equal(expected, output);
                }
            }
            input = expected;
        }
        // The input layer splits with AVX-512BW (row sums) or AVX2 (VNNI or its equivalent), the larger binary convs
        // with AVX-512BW; where the machine has them, they must have split, or the test proves nothing here.
        var first = (ConvLayer)model.Layers[0];
        int mustSplit = (RowSumInputConvStep.Supports(first) || VnniInputConvStep.Supports(first) ? 1 : 0) + (FilterBlockedPopCount.IsAccelerated ? 1 : 0);
        Assert.True(split >= mustSplit, $"{split} steps split, {mustSplit} expected");
    }

    [Theory]
    [InlineData(10, 2, 4)]
    [InlineData(9, 2, 4)]
    [InlineData(7, 3, 4)]
    [InlineData(30, 2, 1)]
    [InlineData(3, 5, 1)]
    public void PartRange_CoversEveryItemOnceInAlignedSlices(int count, int parts, int align)
    {
        int next = 0;
        for (int part = 0; part < parts; part++)
        {
            var (from, to) = PackedStep.PartRange(count, part, parts, align);
            Assert.Equal(next, from);
            Assert.True(to >= from);
            Assert.True(from % align == 0 || from == count, $"part {part} starts at {from}");
            next = to;
        }
        Assert.Equal(count, next);
    }
}
