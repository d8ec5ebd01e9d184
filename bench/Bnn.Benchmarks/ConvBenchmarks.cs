using BenchmarkDotNet.Attributes;
using Bnn.Engine;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Benchmarks;

/// <summary>
/// One binary 3x3 conv step on random weights and activations: the packed XNOR-popcount conv the fast engine runs
/// against the bit-sliced carry-save conv (<see cref="BitSlicedConvStep"/>), on the CNV's binary conv shapes
/// (channels, input size): conv1 (64, 30), conv3 (128, 12 from 64 channels) and conv4 (128, 10).
/// </summary>
[MemoryDiagnoser]
public class ConvBenchmarks
{
    private PackedStep packed = null!;
    private PackedStep sliced = null!;
    private ulong[] input = [];
    private ulong[] output = [];
    private ulong[] packedScratch = [];
    private ulong[] slicedScratch = [];
    private int[] packedAcc = [];
    private int[] slicedAcc = [];

    [Params("conv1", "conv3", "conv4")]
    public string Layer { get; set; } = "conv1";

    [GlobalSetup]
    public void Setup()
    {
        var (inChannels, outChannels, size) = Layer switch
        {
            "conv1" => (64, 64, 30),
            "conv3" => (64, 128, 14),
            _ => (128, 128, 12),
        };
        var model = RandomModels.Create([new ConvSpec(inChannels, 3, 1, 0), new ConvSpec(outChannels, 3, 1, 0), new OutputSpec(2)],
            new Shape(1, size + 2, size + 2), seed: 1);
        var layer = (ConvLayer)model.Layers[1];
        var (inShape, outShape) = (model.InputShapes[1], model.OutputShapes[1]);
        packed = new BinaryConvStep(layer, inShape, outShape, XorPopCount.Best);
        sliced = new BitSlicedConvStep(layer, inShape, outShape);
        var rng = new Random(1);
        input = Enumerable.Range(0, inShape.Height * inShape.Width * BitConvention.Words(inChannels)).Select(_ => (ulong)rng.NextInt64()).ToArray();
        output = new ulong[packed.OutputWords];
        (packedScratch, packedAcc) = (new ulong[packed.PaddedWords], new int[Math.Max(1, packed.AccumulatorCount)]);
        (slicedScratch, slicedAcc) = (new ulong[sliced.PaddedWords], new int[sliced.AccumulatorCount]);
    }

    [Benchmark(Baseline = true)]
    public ulong Packed() => packed.Run(input, output, packedScratch, packedAcc)[0];

    [Benchmark]
    public ulong BitSliced() => sliced.Run(input, output, slicedScratch, slicedAcc)[0];
}
