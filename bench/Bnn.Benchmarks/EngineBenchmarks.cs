using BenchmarkDotNet.Attributes;
using Bnn.Data;
using Bnn.Engine;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Benchmarks;

/// <summary>
/// One image through the packed engine on one thread, a CNV-shaped model at full width: the steady state must
/// allocate nothing (MemoryDiagnoser: 0 B per operation).
/// </summary>
[MemoryDiagnoser]
public class EngineBenchmarks
{
    private PackedEngine engine = null!;
    private ImageSet images = null!;
    private readonly int[] scores = new int[10];

    [Params(PopCountKernel.Scalar, PopCountKernel.Avx2FilterBlocked, PopCountKernel.Avx512FilterBlocked)]
    public PopCountKernel Kernel { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var model = RandomModels.Create(Architectures.Build("cnv", 1.0), new Shape(3, 32, 32), seed: 1);
        engine = new PackedEngine(model, XorPopCount.Supported.Contains(Kernel) ? Kernel : PopCountKernel.Scalar);
        var pixels = new byte[3 * 32 * 32];
        new Random(2).NextBytes(pixels);
        images = new ImageSet(pixels, [0], 3, 32, 32, 10);
        engine.Score(images, 0, 1, scores);
    }

    [Benchmark]
    public int CnvImage()
    {
        engine.Score(images, 0, 1, scores);
        return scores[0];
    }
}
