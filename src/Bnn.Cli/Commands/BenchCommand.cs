using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Text;
using Bnn.Cost;
using Bnn.Data;
using Bnn.Engine;
using Bnn.Engine.Kernels;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Cli;

/// <summary>
/// `bnn bench`: engines side by side on one model: images/s and ms/image (median and spread over repeats after a
/// warm-up), ratios to the fast engine and to ONNX Runtime, peak memory, and the per-layer roofline of the fast engine.
/// </summary>
internal static class BenchCommand
{
    /// <summary>One configuration's result; <paramref name="RoundMs"/> holds its ms per image in each round.</summary>
    internal sealed record Row(string Engine, int Batch, int Threads, int Images, double MsMedian, double MsSpread, double PeakRssMb, IReadOnlyList<double> RoundMs)
    {
        public double ImagesPerSecond => 1000 / MsMedian;
    }

    /// <summary>
    /// How many times faster <paramref name="row"/> ran than <paramref name="baseline"/>: the median over rounds of the
    /// ratio within each round. Both were timed in the same round, seconds apart, so a slow stretch of the machine
    /// (on the Intel host the same engine read 125 and 220 µs per image minutes apart) slows both sides of each ratio;
    /// a ratio of the two medians could pair one's fast rounds with the other's slow ones.
    /// </summary>
    internal static double PairedRatio(Row row, Row baseline) =>
        Median(row.RoundMs.Zip(baseline.RoundMs, (r, b) => b / r));

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : (sorted[(n / 2) - 1] + sorted[n / 2]) / 2;
    }

    private static readonly TimeSpan WarmUp = TimeSpan.FromSeconds(1);

    internal sealed record LayerRow(int Index, string Kind, long TapOps, double Seconds, double AchievedBitOps, double Fraction);

    public static Command Create(CliIo io)
    {
        var model = CommonOptions.Model();
        var engines = new Option<string>("--engines") { Description = "comma-separated engines", DefaultValueFactory = _ => "reference,fast,shared,onnxruntime" };
        var batches = new Option<string>("--batch") { Description = "comma-separated batch sizes (images per call)", DefaultValueFactory = _ => "1,64" };
        var threadList = new Option<string>("--threads") { Description = "comma-separated thread counts", DefaultValueFactory = _ => "1,2" };
        var images = new Option<int>("--images") { Description = "images per timed run (the reference engine uses at most 32)", DefaultValueFactory = _ => 256 };
        var repeats = new Option<int>("--repeats") { Description = "timed rounds, each one pass of every configuration in turn (after at least 1 s of warm-up per configuration)", DefaultValueFactory = _ => 5 };
        var data = CommonOptions.Data(required: false);
        var json = CommonOptions.Json();
        var command = new Command("bench", "Benchmark engines side by side, with the fast engine's per-layer popcount roofline")
        {
            model, engines, batches, threadList, images, repeats, data, json,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var path = parse.GetValue(model)!;
            var m = CommonOptions.LoadModel(path);
            var names = List(parse.GetValue(engines)!, s => s);
            foreach (var name in names.Where(n => !EvalCommand.EngineNames.Contains(n)))
            {
                throw new UsageException($"unknown engine '{name}' (expected some of: {string.Join(", ", EvalCommand.EngineNames)})");
            }
            var batchSizes = List(parse.GetValue(batches)!, Positive);
            var threadCounts = List(parse.GetValue(threadList)!, Positive);
            int count = parse.GetValue(images), runs = parse.GetValue(repeats);
            if (count <= 0 || runs <= 0)
            {
                throw new UsageException("--images and --repeats must be positive");
            }
            var set = parse.GetValue(data) is string dir
                ? Datasets.Load("cifar10", dir, "test").Take(count)
                : RandomImages(m, count);
            var planned = m.Plans.Count > 0 ? m : m.WithPlans(Planner.PlanModel(m, Planner.ExactSimilar));
            IReadOnlyList<LayerChoice> choices = [];
            var created = new List<IEngine>();
            var timings = new List<Timing>();
            try
            {
                foreach (var name in names)
                {
                    var engine = EvalCommand.CreateEngine(name, name == "shared" ? planned : m, path);
                    created.Add(engine);
                    choices = engine is SharedEngine sharedEngine ? sharedEngine.Choices : choices;
                    var subset = name == "reference" ? set.Take(Math.Min(set.Count, 32)) : set;
                    foreach (int batch in batchSizes)
                    {
                        foreach (int threads in threadCounts)
                        {
                            timings.Add(new Timing(engine, subset, batch, threads, runs));
                        }
                    }
                }
                TimeInRounds(timings, runs);
            }
            finally
            {
                foreach (var engine in created)
                {
                    (engine as IDisposable)?.Dispose();
                }
            }
            var rows = timings.Select(t => t.Result()).ToList();
            foreach (var row in rows)
            {
                io.Err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {row.Engine} batch {row.Batch} threads {row.Threads}: {row.ImagesPerSecond:F1} images/s"));
            }
            var roofline = Roofline.Measure();
            // The fast engine timed above, so that the per-layer table shows the kernels its throughput rows ran.
            var (layers, convChoices) = ProfileLayers(m, set, roofline.Peak, created.OfType<PackedEngine>().FirstOrDefault() ?? new PackedEngine(m));
            // Per layer, the plane conv's own time (every supported layer forced shared) beside the dense one, and what the shared engine chose.
            var sharedLayers = names.Contains("shared") ? ProfileShared(planned, set) : null;
            io.Out.Write(Render(rows, layers, roofline, m, names.Contains("shared") && planned != m, sharedLayers, choices, convChoices));
            if (parse.GetValue(json) is string jsonPath)
            {
                CommonOptions.WriteJson(jsonPath, w => WriteJson(w, path, rows, layers, roofline, choices, convChoices));
            }
            return BnnApp.Ok;
        }));
        return command;
    }

    private static int Positive(string s) => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v > 0
        ? v
        : throw new UsageException($"'{s}' is not a positive integer");

    private static List<T> List<T>(string text, Func<string, T> parse) =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(parse).ToList();

    private static ImageSet RandomImages(BnnModel m, int count)
    {
        var rng = new Random(1);
        var pixels = new byte[count * m.Input.Size];
        rng.NextBytes(pixels);
        return new ImageSet(pixels, new byte[count], m.Input.Channels, m.Input.Height, m.Input.Width, m.Classes);
    }

    /// <summary>
    /// Round by round, one timed pass of every configuration each. A machine that slows down for a while (on the
    /// shared 2-core host one engine alone read 6,000 and 7,700 images/s within a process) then slows every engine
    /// alike, instead of whichever was being measured, and the ratios hold.
    /// </summary>
    internal static void TimeInRounds(IReadOnlyList<Timing> timings, int runs)
    {
        for (int r = 0; r < runs; r++)
        {
            foreach (var timing in timings)
            {
                timing.TimePass(r);
            }
        }
    }

    /// <summary>
    /// One configuration's timed passes over the images in calls of its batch size. Created with warm-up passes for at
    /// least <see cref="WarmUp"/> (so tiered compilation has replaced tier-0 code, which a single pass did not: the
    /// first configuration measured ~20 % slow), after which the process's peak memory so far is its memory figure.
    /// </summary>
    internal sealed class Timing
    {
        private readonly IEngine engine;
        private readonly ImageSet images;
        private readonly int[] scores;
        private readonly double[] ms;
        private readonly double peakRssMb;

        public Timing(IEngine engine, ImageSet images, int batch, int threads, int runs)
        {
            (this.engine, this.images, Batch, Threads) = (engine, images, batch, threads);
            scores = new int[Math.Min(batch, images.Count) * engine.Model.Classes];
            ms = new double[runs];
            var warm = Stopwatch.StartNew();
            do
            {
                Pass();
            }
            while (warm.Elapsed < WarmUp);
            using var self = Process.GetCurrentProcess();
            peakRssMb = self.PeakWorkingSet64 / (1024.0 * 1024.0);
        }

        public int Batch { get; }

        public int Threads { get; }

        public void TimePass(int run)
        {
            var clock = Stopwatch.StartNew();
            Pass();
            ms[run] = clock.Elapsed.TotalMilliseconds / images.Count;
        }

        /// <summary>The median and spread (max − min) of the passes, in ms per image.</summary>
        public Row Result()
        {
            return new Row(engine.Name, Batch, Threads, images.Count, Median(ms), ms.Max() - ms.Min(), peakRssMb, ms.ToArray());
        }

        private void Pass()
        {
            for (int start = 0; start < images.Count; start += Batch)
            {
                int n = Math.Min(Batch, images.Count - start);
                engine.Score(images, start, n, scores.AsSpan(0, n * engine.Model.Classes), Threads);
            }
        }
    }

    private static double[] ProfileShared(BnnModel planned, ImageSet images)
    {
        int count = Math.Min(images.Count, 64);
        var engine = new SharedEngine(planned, selection: LayerSelection.Shared);
        engine.ProfileLayers(images, Math.Min(count, 16));
        return engine.ProfileLayers(images, count).Select(t => t / count).ToArray();
    }

    private static (List<LayerRow> Layers, IReadOnlyList<ConvKernelChoice> ConvChoices) ProfileLayers(BnnModel m, ImageSet images, double peak, PackedEngine engine)
    {
        engine.ProfileLayers(images, Math.Min(images.Count, 16));
        var seconds = engine.ProfileLayers(images, images.Count);
        var sliced = engine.ConvChoices.Where(c => c.BitSliced).Select(c => c.Layer).ToHashSet();
        return (Enumerable.Range(0, m.Layers.Count).Select(i =>
        {
            long ops = CostModel.LayerTapOps(m, i);
            double achieved = ops * (double)images.Count / Math.Max(seconds[i], 1e-12);
            string kind = m.Layers[i] is ConvLayer { IsInputLayer: true } ? "input-conv" : sliced.Contains(i) ? "conv-sliced" : m.Layers[i].Kind;
            return new LayerRow(i, kind, ops, seconds[i] / images.Count, achieved, achieved / peak);
        }).ToList(), engine.ConvChoices);
    }

    internal static string Render(IReadOnlyList<Row> rows, IReadOnlyList<LayerRow> layers, Roofline.Result roofline, BnnModel m, bool plannedHere,
        double[]? sharedSeconds = null, IReadOnlyList<LayerChoice>? choices = null, IReadOnlyList<ConvKernelChoice>? convChoices = null)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        long modelOps = layers.Sum(l => l.TapOps);
        sb.AppendLine(inv, $"{"engine",-12} {"batch",5} {"threads",7} {"images/s",10} {"ms/image",9} {"spread",8} {"vs fast",8} {"vs ORT",8} {"peak RSS",9} {"Gbit-ops/s",10} {"of roof",8}");
        foreach (var r in rows)
        {
            var (fast, ort) = (Baseline(rows, r, "fast"), Baseline(rows, r, "onnxruntime"));
            var (achieved, fraction) = Achieved(r, modelOps, roofline.Peak);
            sb.AppendLine(inv, $"{r.Engine,-12} {r.Batch,5} {r.Threads,7} {r.ImagesPerSecond,10:F1} {r.MsMedian,9:F3} {r.MsSpread,8:F3} {Ratio(r, fast),8} {Ratio(r, ort),8} {r.PeakRssMb,7:F0}MB {achieved / 1e9,10:F1} {fraction,8:P1}");
        }
        sb.AppendLine("vs fast, vs ORT: median over the rounds of the ratio within each round (rounds time every configuration in turn)");
        if (Noisy(rows) is { Count: > 0 } noisy)
        {
            sb.AppendLine(inv, $"noisy: the spread exceeds half the median for {string.Join(", ", noisy.Select(r => $"{r.Engine} batch {r.Batch} threads {r.Threads}"))}; the machine's speed varied during the run, so more --repeats (or a quieter machine) give steadier figures");
        }
        sb.AppendLine("Gbit-ops/s: the model's tap ops per image (as dense, for every engine) times images/s; of roof: against the roofline peak below times the threads");
        if (plannedHere)
        {
            sb.AppendLine("shared: the model carries no plans, so it ran with exact-similar plans made for the benchmark");
        }
        sb.AppendLine(inv, $"roofline (1 thread, operands in L1): {string.Join(", ", roofline.BitOpsPerSecond.Select(p => $"{p.Key} {p.Value / 1e9:F1}"))} Gbit-ops/s; peak {roofline.Peak / 1e9:F1} ({roofline.Best})");
        sb.AppendLine(inv, $"{"layer",-6} {"kind",-11} {"tap ops",12} {"µs/image",9} {"Gbit-ops/s",10} {"of peak",8}{(sharedSeconds is null ? "" : " shared µs/image  shared engine runs")}");
        foreach (var l in layers)
        {
            var choice = choices?.FirstOrDefault(c => c.Layer == l.Index);
            string shared = sharedSeconds is null ? "" : string.Create(inv, $" {sharedSeconds[l.Index] * 1e6,15:F1}  {choice?.Reason ?? ""}");
            sb.AppendLine(inv, $"{l.Index,-6} {l.Kind,-11} {l.TapOps,12:N0} {l.Seconds * 1e6,9:F1} {l.AchievedBitOps / 1e9,10:F2} {(l.TapOps > 0 ? l.Fraction.ToString("P1", inv) : "-"),8}{shared}");
        }
        long totalOps = layers.Sum(l => l.TapOps);
        double totalSeconds = layers.Sum(l => l.Seconds);
        sb.AppendLine(inv, $"{"total",-6} {"",-11} {totalOps,12:N0} {totalSeconds * 1e6,9:F1} {totalOps / totalSeconds / 1e9,10:F2} {totalOps / totalSeconds / roofline.Peak,8:P1}");
        sb.AppendLine("(the input conv's taps are 8-bit multiply-adds, not XNOR-popcounts; its fraction of the popcount peak is shown for scale only)");
        if (convChoices is { Count: > 0 })
        {
            // Every timed choice, kept or not: the alternative's time is the measurement behind the kernel choice.
            sb.AppendLine(inv, $"fast engine's conv kernels (µs per whole image with each at that layer; bit-sliced must make it {PackedEngine.ImageMargin - 1:P0} faster): {string.Join(", ", convChoices.Select(c =>
                $"layer {c.Layer} {(c.BitSliced ? "bit-sliced" : "packed")} (packed {c.PackedMicroseconds:F1}, bit-sliced {c.BitSlicedMicroseconds:F1})"))}");
        }
        return sb.ToString();
    }

    /// <summary>A row's tap ops per second over the whole model, and that as a fraction of the one-thread peak times its threads.</summary>
    private static (double BitOpsPerSecond, double Fraction) Achieved(Row r, long modelOps, double peak)
    {
        double achieved = modelOps * r.ImagesPerSecond;
        return (achieved, achieved / (peak * r.Threads));
    }

    /// <summary>Rows whose spread over the rounds (max − min) exceeds half their median.</summary>
    internal static List<Row> Noisy(IEnumerable<Row> rows) => [.. rows.Where(r => r.MsSpread > r.MsMedian / 2)];

    /// <summary>The row of <paramref name="engine"/> with <paramref name="r"/>'s batch and threads, if it was measured.</summary>
    private static Row? Baseline(IReadOnlyList<Row> rows, Row r, string engine) =>
        rows.FirstOrDefault(x => x.Engine == engine && x.Batch == r.Batch && x.Threads == r.Threads);

    private static string Ratio(Row r, Row? baseline) =>
        baseline is null ? "-" : PairedRatio(r, baseline).ToString("F2", CultureInfo.InvariantCulture) + "x";

    private static void WriteJson(System.Text.Json.Utf8JsonWriter w, string path, IReadOnlyList<Row> rows, IReadOnlyList<LayerRow> layers, Roofline.Result roofline,
        IReadOnlyList<LayerChoice> choices, IReadOnlyList<ConvKernelChoice> convChoices)
    {
        void WriteMicroseconds(string name, double value)
        {
            if (double.IsNaN(value))
            {
                w.WriteNull(name);
            }
            else
            {
                w.WriteNumber(name, value);
            }
        }

        w.WriteStartObject();
        w.WriteString("model", path);
        w.WriteStartArray("results");
        long modelOps = layers.Sum(l => l.TapOps);
        foreach (var r in rows)
        {
            var (achieved, fraction) = Achieved(r, modelOps, roofline.Peak);
            w.WriteStartObject();
            w.WriteString("engine", r.Engine);
            w.WriteNumber("batch", r.Batch);
            w.WriteNumber("threads", r.Threads);
            w.WriteNumber("images", r.Images);
            w.WriteNumber("images_per_second", r.ImagesPerSecond);
            w.WriteNumber("ms_per_image", r.MsMedian);
            w.WriteNumber("ms_spread", r.MsSpread);
            w.WriteNumber("peak_rss_mb", r.PeakRssMb);
            w.WriteNumber("bit_ops_per_second", achieved);
            w.WriteNumber("fraction_of_peak", fraction);
            foreach (var (name, baseline) in new[] { ("vs_fast", "fast"), ("vs_onnxruntime", "onnxruntime") })
            {
                if (Baseline(rows, r, baseline) is { } b)
                {
                    w.WriteNumber(name, PairedRatio(r, b));
                }
            }
            w.WriteStartArray("round_ms_per_image");
            foreach (double ms in r.RoundMs)
            {
                w.WriteNumberValue(ms);
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartObject("roofline");
        w.WriteNumber("peak_bit_ops_per_second", roofline.Peak);
        w.WriteString("peak_kernel", roofline.Best);
        foreach (var (kernel, rate) in roofline.BitOpsPerSecond)
        {
            w.WriteNumber(kernel, rate);
        }
        w.WriteEndObject();
        w.WriteStartArray("layers");
        foreach (var l in layers)
        {
            w.WriteStartObject();
            w.WriteNumber("index", l.Index);
            w.WriteString("kind", l.Kind);
            w.WriteNumber("tap_ops", l.TapOps);
            w.WriteNumber("seconds_per_image", l.Seconds);
            w.WriteNumber("bit_ops_per_second", l.AchievedBitOps);
            w.WriteNumber("fraction_of_peak", l.Fraction);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("shared_choices");
        foreach (var c in choices)
        {
            w.WriteStartObject();
            w.WriteNumber("index", c.Layer);
            w.WriteBoolean("shared", c.Shared);
            WriteMicroseconds("dense_us", c.DenseMicroseconds);
            WriteMicroseconds("shared_us", c.SharedMicroseconds);
            w.WriteString("reason", c.Reason);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("fast_conv_kernels");
        foreach (var c in convChoices)
        {
            w.WriteStartObject();
            w.WriteNumber("index", c.Layer);
            w.WriteBoolean("bit_sliced", c.BitSliced);
            w.WriteNumber("packed_us", c.PackedMicroseconds);
            w.WriteNumber("bit_sliced_us", c.BitSlicedMicroseconds);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartObject("machine");
        w.WriteString("cpu", CpuInfo("model name"));
        // "AMD EPYC" alone does not say which core: family 25 is Zen 3/4, 26 is Zen 5.
        w.WriteString("cpu_family", CpuInfo("cpu family"));
        w.WriteString("cpu_model", CpuInfo("model"));
        w.WriteNumber("logical_cores", Environment.ProcessorCount);
        w.WriteString("os", RuntimeInformation.OSDescription);
        w.WriteString("runtime", RuntimeInformation.FrameworkDescription);
        w.WriteBoolean("avx2", Avx2.IsSupported);
        w.WriteBoolean("avx512bw", Avx512BW.IsSupported);
        w.WriteBoolean("avx512vbmi", Avx512Vbmi.IsSupported);
        w.WriteBoolean("avx_vnni", AvxVnni.IsSupported);
        w.WriteString("onnxruntime", Onnx.OnnxRuntimeEngine.RuntimeVersion);
        w.WriteString("date", DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture));
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>The first value of a /proc/cpuinfo field ("model name", "cpu family", "model"), or "unknown".</summary>
    private static string CpuInfo(string field)
    {
        try
        {
            return File.ReadLines("/proc/cpuinfo").Select(l => l.Split(':', 2)).FirstOrDefault(p => p.Length == 2 && p[0].Trim() == field)?[1].Trim() ?? "unknown";
        }
        catch (IOException)
        {
            return "unknown";
        }
    }
}
