using BenchmarkDotNet.Attributes;
using Bnn.Engine;
using Bnn.Model;

namespace Bnn.Benchmarks;

/// <summary>
/// The first layer on raw pixels, one image, in each implementation this CPU runs: the row-sum step in 512-bit and
/// 256-bit vectors, VNNI on raw pixels (or its AVX2 emulation) and the scalar-accumulator step the recalibration uses.
/// The shape is the CNV's input conv (3 → 64 channels, 3x3 valid on 32x32); the VGG's (128 channels, padded) as well.
/// </summary>
public class InputConvBenchmarks
{
    private PackedStep step = null!;
    private byte[] pixels = [];
    private ulong[] output = [];
    private ulong[] scratch = [];
    private int[] acc = [];

    [Params("cnv", "vgg")]
    public string Shape { get; set; } = "cnv";

    /// <summary>The implementations this CPU runs.</summary>
    public static IEnumerable<string> Implementations =>
    [
        .. RowSumInputConvStep.Widths.Select(wide => wide ? "RowSum512" : "RowSum256"),
        .. VnniInputConvStep.Supports(InputLayer("cnv").Layer) ? ["Vnni"] : Array.Empty<string>(),
        "Accumulators",
    ];

    [ParamsSource(nameof(Implementations))]
    public string Step { get; set; } = "Accumulators";

    [GlobalSetup]
    public void Setup()
    {
        var (layer, inShape, outShape) = InputLayer(Shape);
        step = Step switch
        {
            "RowSum512" or "RowSum256" => new RowSumInputConvStep(layer, inShape, outShape, wide: Step == "RowSum512"),
            "Vnni" => new VnniInputConvStep(layer, inShape, outShape),
            _ => new InputConvStep(layer, inShape, outShape),
        };
        pixels = new byte[inShape.Size];
        new Random(1).NextBytes(pixels);
        output = new ulong[step.OutputWords];
        scratch = new ulong[step.PaddedWords];
        acc = new int[Math.Max(1, step.AccumulatorCount)];
    }

    [Benchmark]
    public ulong Run() => step.RunPixels(pixels, output, scratch, acc)[0];

    private static (ConvLayer Layer, Model.Shape InShape, Model.Shape OutShape) InputLayer(string shape)
    {
        var (filters, padding) = shape == "cnv" ? (64, 0) : (128, 1);
        var model = RandomModels.Create([new ConvSpec(filters, 3, 1, padding), new OutputSpec(2)], new Model.Shape(3, 32, 32), seed: 1);
        return ((ConvLayer)model.Layers[0], model.InputShapes[0], model.OutputShapes[0]);
    }
}
