using System.Text.Json;
using Bnn.Model;

namespace Bnn.Tests.Cli;

public sealed class BenchTests
{
    [Fact]
    public void Bench_AllEngines_WritesTheDocumentedJson()
    {
        using var dir = new TempDirectory();
        var model = RandomModels.Create(Architectures.Build("cnv", 0.125), new Shape(3, 32, 32), seed: 4);
        ModelFile.Save(model, dir.File("m.bnn"));

        var (code, output, err) = CliRunner.Run("bench", "--model", dir.File("m.bnn"), "--engines", "reference,fast,shared,onnxruntime",
            "--batch", "1,4", "--threads", "1,2", "--images", "8", "--repeats", "2", "--json", dir.File("b.json"));

        Assert.True(code == 0, err);
        Assert.Contains("roofline", output);
        using var json = JsonDocument.Parse(File.ReadAllText(dir.File("b.json")));
        var results = json.RootElement.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(4 * 2 * 2, results.Count);
        foreach (var r in results)
        {
            foreach (var field in new[] { "engine", "batch", "threads", "images_per_second", "ms_per_image", "ms_spread", "peak_rss_mb" })
            {
                Assert.True(r.TryGetProperty(field, out _), field);
            }
            Assert.True(r.GetProperty("images_per_second").GetDouble() > 0);
            // The whole model's tap ops per second, and that against the one-thread roofline times the threads
            long modelOps = json.RootElement.GetProperty("layers").EnumerateArray().Sum(l => l.GetProperty("tap_ops").GetInt64());
            double achieved = r.GetProperty("bit_ops_per_second").GetDouble();
            Assert.Equal(modelOps * r.GetProperty("images_per_second").GetDouble(), achieved, 1e-6 * achieved);
            double peak = json.RootElement.GetProperty("roofline").GetProperty("peak_bit_ops_per_second").GetDouble();
            Assert.Equal(achieved / (peak * r.GetProperty("threads").GetInt32()), r.GetProperty("fraction_of_peak").GetDouble(), 1e-9);
            Assert.True(r.GetProperty("ms_spread").GetDouble() >= 0);
            Assert.Equal(2, r.GetProperty("round_ms_per_image").GetArrayLength());
            Assert.True(r.GetProperty("vs_fast").GetDouble() > 0 && r.GetProperty("vs_onnxruntime").GetDouble() > 0);
        }
        Assert.Equal(["reference", "fast", "shared", "onnxruntime"], results.Select(r => r.GetProperty("engine").GetString()).Distinct());
        Assert.Equal(model.Layers.Count, json.RootElement.GetProperty("layers").GetArrayLength());
        Assert.True(json.RootElement.GetProperty("roofline").GetProperty("peak_bit_ops_per_second").GetDouble() > 0);
        Assert.True(json.RootElement.GetProperty("machine").TryGetProperty("cpu", out _));

        // The fast engine timed both dense kernels on every binary conv (where the bit-sliced one can run here), and
        // each layer row names the kernel that ran
        var convKernels = json.RootElement.GetProperty("fast_conv_kernels").EnumerateArray().ToList();
        Assert.Equal(System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? model.ConvLayers.Count(c => !c.Layer.IsInputLayer) : 0, convKernels.Count);
        var layers = json.RootElement.GetProperty("layers").EnumerateArray().ToList();
        foreach (var c in convKernels)
        {
            Assert.True(c.GetProperty("packed_us").GetDouble() > 0 && c.GetProperty("bit_sliced_us").GetDouble() > 0);
            string expected = c.GetProperty("bit_sliced").GetBoolean() ? "conv-sliced" : "conv";
            Assert.Equal(expected, layers[c.GetProperty("index").GetInt32()].GetProperty("kind").GetString());
        }
    }

    [Fact]
    public void Bench_TimesEveryConfigurationOncePerRound_SoThatAPassingSlowdownHitsThemAlike()
    {
        var model = RandomModels.Create(Architectures.Build("cnv", 0.125), new Shape(3, 32, 32), seed: 4);
        var images = new Bnn.Data.ImageSet(new byte[4 * model.Input.Size], new byte[4], 3, 32, 32, model.Classes);
        var calls = new List<string>();
        var timings = new[]
        {
            new Bnn.Cli.BenchCommand.Timing(new RecordingEngine("a", model, calls), images, batch: 2, threads: 1, runs: 3),
            new Bnn.Cli.BenchCommand.Timing(new RecordingEngine("b", model, calls), images, batch: 4, threads: 2, runs: 3),
        };
        calls.Clear(); // the warm-up passes

        Bnn.Cli.BenchCommand.TimeInRounds(timings, 3);

        // A pass of "a" is two calls of 2 images, one of "b" a call of 4
        Assert.Equal(["a/1", "a/1", "b/2", "a/1", "a/1", "b/2", "a/1", "a/1", "b/2"], calls);
        var rows = timings.Select(t => t.Result()).ToList();
        Assert.Equal([("a", 2, 1), ("b", 4, 2)], rows.Select(r => (r.Engine, r.Batch, r.Threads)));
        Assert.All(rows, r => Assert.True(r.MsMedian > 0 && r.MsSpread >= 0 && r.PeakRssMb > 0));
    }

    [Fact]
    public void BenchRatio_PairsRoundsSoThatASlowRoundSlowsBothSides()
    {
        // Round 2 ran slow for both (10x, as in round 1); round 3 only while ONNX Runtime ran (40x)
        var engine = new Bnn.Cli.BenchCommand.Row("fast", 64, 1, 64, 0.2, 0.3, 1, [0.1, 0.4, 0.1]);
        var ort = new Bnn.Cli.BenchCommand.Row("onnxruntime", 64, 1, 64, 1, 3, 1, [1, 4, 4]);

        // The ratio of the medians reads 4 / 0.1 = 40x, pairing ONNX Runtime's slow rounds with the engine's fast ones;
        // the median of the paired ratios reads 10x
        Assert.Equal(10, Bnn.Cli.BenchCommand.PairedRatio(engine, ort), 9);
        Assert.Equal(0.1, Bnn.Cli.BenchCommand.PairedRatio(ort, engine), 9);

        // Both spread by more than half their median (0.3 on 0.2, 3 on 1): both are flagged; a steady row is not
        var steady = new Bnn.Cli.BenchCommand.Row("fast", 64, 2, 64, 0.1, 0.05, 1, [0.1, 0.15, 0.1]);
        Assert.Equal([engine, ort], Bnn.Cli.BenchCommand.Noisy([engine, steady, ort]));
    }

    private sealed class RecordingEngine(string name, BnnModel model, List<string> calls) : Bnn.Engine.IEngine
    {
        public string Name => name;

        public BnnModel Model => model;

        public void Score(Bnn.Data.ImageSet images, int start, int count, Span<int> scores, int threads = 1)
        {
            calls.Add($"{name}/{threads}");
            scores.Clear();
        }
    }

    [Fact]
    public void Bench_UnknownEngine_IsAUsageError()
    {
        using var dir = new TempDirectory();
        ModelFile.Save(RandomModels.Create(Architectures.Build("cnv", 0.125), new Shape(3, 32, 32), seed: 4), dir.File("m.bnn"));
        var (code, _, err) = CliRunner.Run("bench", "--model", dir.File("m.bnn"), "--engines", "fast,gpu");
        Assert.Equal(1, code);
        Assert.Contains("unknown engine 'gpu'", err);
    }
}
