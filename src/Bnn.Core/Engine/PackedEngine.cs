using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Bnn.Data;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// Which dense kernel an engine runs for one binary conv layer, and the measured times that decided it: of one whole
/// image with that layer's kernel swapped (<see cref="PackedEngine.ConvChoices"/>).
/// </summary>
/// <param name="Layer">Layer index.</param>
/// <param name="BitSliced">Whether the bit-sliced conv runs (else the packed XNOR-popcount conv).</param>
/// <param name="PackedMicroseconds">Measured time per image with the packed conv.</param>
/// <param name="BitSlicedMicroseconds">Measured time per image with the bit-sliced conv.</param>
public sealed record ConvKernelChoice(int Layer, bool BitSliced, double PackedMicroseconds, double BitSlicedMicroseconds)
{
    /// <summary>The measured time of the kernel that runs.</summary>
    public double ChosenMicroseconds => BitSliced ? BitSlicedMicroseconds : PackedMicroseconds;
}

/// <summary>
/// The bit-packed dense engine ("fast"): activations packed along channels (see <see cref="BitConvention"/>),
/// XNOR-popcount through <see cref="XorPopCount"/> (or, for a binary 3x3 conv where it measures faster, the
/// bit-sliced count of <see cref="BitSlicedConvStep"/>), parallel over images (or, for one image with threads to spare,
/// over each image's positions), and per-worker buffers reused across images so the steady state allocates nothing.
/// Concurrent <see cref="Score"/> calls on one instance are safe: each call rents its own workspaces from a pool,
/// which grows to the largest number in use at once; only one call at a time splits an image across threads.
/// </summary>
public sealed class PackedEngine : IEngine
{
    /// <summary>
    /// How much faster whole images must run with an alternative kernel at a layer (the bit-sliced conv, or the shared
    /// engine's plane conv) for the engine to keep it instead of the one it compiled (see <see cref="ChooseSteps"/>).
    /// </summary>
    internal const double ImageMargin = 1.05;

    /// <summary>Untimed runs of each choice in <see cref="ChooseSteps"/>, then timed runs, of which the fastest counts.</summary>
    private const int WarmUps = 2, TimedRuns = 9;

    private readonly PackedStep[] steps;
    private readonly Lock workspaceLock = new();
    private readonly Stack<Workspace> idleWorkspaces = [];
    private readonly bool splits;
    private ImageSplitter? splitter;
    private int splitterInUse;

    /// <summary>
    /// Compiles <paramref name="model"/> for packed execution with the given popcount kernel. With
    /// <see cref="PopCountKernel.Auto"/>, each binary 3x3 conv also gets whichever of the packed and the bit-sliced
    /// conv makes whole images faster here (<see cref="ConvChoices"/>); an explicit kernel runs every conv packed with it.
    /// </summary>
    public PackedEngine(BnnModel model, PopCountKernel kernel = PopCountKernel.Auto)
        : this(model, kernel == PopCountKernel.Auto ? XorPopCount.Best : kernel, null, chooseConvs: kernel == PopCountKernel.Auto)
    {
    }

    /// <summary>
    /// An engine whose steps are compiled here except where <paramref name="replaced"/> gives one. With
    /// <paramref name="chooseConvs"/>, binary 3x3 convs get the faster of the packed and the bit-sliced conv; then each
    /// step in <paramref name="alternatives"/> (the shared engine's plane convs) replaces its layer's step where whole
    /// images run faster with it (<see cref="AlternativeChoices"/>).
    /// </summary>
    internal PackedEngine(BnnModel model, PopCountKernel kernel, IReadOnlyDictionary<int, PackedStep>? replaced, bool chooseConvs,
        IReadOnlyDictionary<int, PackedStep>? alternatives = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
        Kernel = kernel;
        steps = new PackedStep[model.Layers.Count];
        for (int i = 0; i < steps.Length; i++)
        {
            var (layer, inShape, outShape) = (model.Layers[i], model.InputShapes[i], model.OutputShapes[i]);
            steps[i] = replaced is not null && replaced.TryGetValue(i, out var step) ? step
                : Compile(layer, inShape, outShape, Kernel, fastInput: true);
        }
        var candidates = chooseConvs ? BitSlicedCandidates(replaced) : [];
        ConvChoices = [.. ChooseSteps(candidates).Select(c => new ConvKernelChoice(c.Layer, c.Kept, c.CompiledMicroseconds, c.AlternativeMicroseconds))];
        AlternativeChoices = alternatives is null ? [] : ChooseSteps(alternatives.OrderBy(a => a.Key).ToList());
        splits = steps.Any(s => s.Splits);
    }

    /// <summary>The bit-sliced conv for every binary conv it supports that this engine compiled.</summary>
    private List<KeyValuePair<int, PackedStep>> BitSlicedCandidates(IReadOnlyDictionary<int, PackedStep>? replaced)
    {
        var candidates = new List<KeyValuePair<int, PackedStep>>();
        for (int i = 0; i < steps.Length; i++)
        {
            if (replaced?.ContainsKey(i) != true && Model.Layers[i] is ConvLayer { IsInputLayer: false } conv && BitSlicedConvStep.Supports(conv))
            {
                candidates.Add(KeyValuePair.Create(i, (PackedStep)new BitSlicedConvStep(conv, Model.InputShapes[i], Model.OutputShapes[i])));
            }
        }
        return candidates;
    }

    /// <summary>
    /// Layer by layer, times whole images (synthetic pixels; the kernels have no data-dependent branches) with the
    /// compiled step and with the alternative, alternately, and keeps the alternative where the image runs
    /// <see cref="ImageMargin"/> faster. Whole images, not the step alone: the bit-sliced conv's 100-180 KB of planes
    /// and counters evict what the other steps keep in cache, and how much that costs depends on the machine. On the
    /// Zen 4 host its conv1 took 40.5 µs alone and 54.6-59.4 in the pipeline, against 56.1 and 57.2 packed; on the
    /// Intel host of session 19 it was 1.22x faster alone and made the whole image about 9 % faster (123-131 against
    /// 134-150 µs).
    /// <para>A few runs suffice only because every method a step calls per row or per group of positions is compiled
    /// fully optimized from its first call (<c>AggressiveOptimization</c>) or inlined into one that is: a plain helper
    /// runs as tier-0 code until tiered compilation replaces it, later than these runs. One such helper (the plane
    /// conv's widening add) once made the shared steps time 3-4x slower than they run.</para>
    /// </summary>
    private List<StepChoice> ChooseSteps(List<KeyValuePair<int, PackedStep>> alternatives)
    {
        var choices = new List<StepChoice>();
        var pixels = new byte[Model.InputShapes[0].Size];
        new Random(1).NextBytes(pixels);
        var scores = new int[Model.Classes];
        foreach (var (i, alternative) in alternatives)
        {
            var compiled = steps[i];
            var compiledWorkspace = new Workspace(steps);
            steps[i] = alternative;
            var alternativeWorkspace = new Workspace(steps);
            double compiledTime = double.MaxValue, alternativeTime = double.MaxValue;
            for (int r = 0; r < WarmUps + TimedRuns; r++)
            {
                steps[i] = compiled;
                double c = ImageMicroseconds(pixels, compiledWorkspace, scores);
                steps[i] = alternative;
                double a = ImageMicroseconds(pixels, alternativeWorkspace, scores);
                if (r >= WarmUps)
                {
                    (compiledTime, alternativeTime) = (Math.Min(compiledTime, c), Math.Min(alternativeTime, a));
                }
            }
            bool keep = alternativeTime * ImageMargin < compiledTime;
            steps[i] = keep ? alternative : compiled;
            choices.Add(new StepChoice(i, keep, compiledTime, alternativeTime));
        }
        return choices;
    }

    private double ImageMicroseconds(ReadOnlySpan<byte> pixels, Workspace ws, Span<int> scores)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        ScoreImage(pixels, ws, scores);
        return (System.Diagnostics.Stopwatch.GetTimestamp() - start) * 1e6 / System.Diagnostics.Stopwatch.Frequency;
    }

    /// <summary>Per binary 3x3 conv that the bit-sliced conv supports, which dense kernel runs and the whole-image times that decided (empty for an explicit kernel).</summary>
    public IReadOnlyList<ConvKernelChoice> ConvChoices { get; }

    /// <summary>Per layer given an alternative step, whether it runs and the whole-image times that decided.</summary>
    internal IReadOnlyList<StepChoice> AlternativeChoices { get; }

    /// <summary>
    /// One timed choice: whether layer <paramref name="Layer"/> runs the <paramref name="Kept"/> alternative, and the
    /// microseconds per whole image with the compiled step and with the alternative.
    /// </summary>
    internal readonly record struct StepChoice(int Layer, bool Kept, double CompiledMicroseconds, double AlternativeMicroseconds);

    /// <summary>
    /// Compiles one layer for packed execution. With <paramref name="fastInput"/>, the input layer runs as shared row
    /// sums where AVX2 or AVX-512BW is present and its rules allow (<see cref="RowSumInputConvStep"/>: stride 1), else
    /// with VNNI on raw pixels where it can (<see cref="VnniInputConvStep"/>), else as a dense plane conv (vectorized over pixels, every
    /// 2-D filter computed: no sharing) where 512-bit vectors are accelerated; otherwise, and always for recalibration,
    /// which reads its position-major accumulators, as <see cref="InputConvStep"/>.
    /// </summary>
    internal static PackedStep Compile(Layer layer, Shape inShape, Shape outShape, PopCountKernel kernel, bool fastInput = false) => layer switch
    {
        ConvLayer { IsInputLayer: true } c when fastInput && RowSumInputConvStep.Supports(c) => new RowSumInputConvStep(c, inShape, outShape),
        ConvLayer { IsInputLayer: true } c when fastInput && VnniInputConvStep.Supports(c) => new VnniInputConvStep(c, inShape, outShape),
        ConvLayer { IsInputLayer: true } c when fastInput && Vector512.IsHardwareAccelerated && PlaneConvStep.Supports(c) && Sharing.FilterCode.Supports(c)
            => PlaneConvStep.Create(c, Sharing.Planner.PlanDense(c), inShape, outShape),
        ConvLayer { IsInputLayer: true } c => new InputConvStep(c, inShape, outShape),
        ConvLayer c => new BinaryConvStep(c, inShape, outShape, kernel),
        MaxPoolLayer p => new PoolStep(p, inShape, outShape),
        DenseLayer d => new DenseStep(d.Weights, d.Threshold, inShape, d.OutFeatures, kernel),
        OutputLayer o => new DenseStep(o.Weights, null, inShape, o.Classes, kernel),
        _ => throw new InvalidOperationException("unknown layer"),
    };

    /// <inheritdoc/>
    public string Name => "fast";

    /// <inheritdoc/>
    public BnnModel Model { get; }

    /// <summary>The popcount kernel in use.</summary>
    public PopCountKernel Kernel { get; }

    /// <inheritdoc/>
    public void Score(ImageSet images, int start, int count, Span<int> scores, int threads = 1)
    {
        EngineExtensions.CheckInput(Model, images, start, count, scores.Length);
        int classes = Model.Classes;
        int workers = Math.Max(1, Math.Min(threads, count));
        if (workers == 1)
        {
            // The single-threaded path allocates nothing: the steady state is 0 bytes per image (see bench/). One image
            // with threads to spare is split across two (ImageSplitter), which allocates nothing either.
            var single = RentWorkspace();
            var split = threads >= 2 && splits ? TryRentSplitter() : null;
            try
            {
                for (int i = 0; i < count; i++)
                {
                    ScoreImage(images.Image(start + i), single, scores.Slice(i * classes, classes), split: split);
                }
            }
            finally
            {
                if (split is not null)
                {
                    Volatile.Write(ref splitterInUse, 0);
                }
                ReturnWorkspace(single);
            }
            return;
        }
        ScoreParallel(images, start, count, workers).CopyTo(scores);
    }

    // Separate from Score because a lambda's captured parameters are allocated on entry to the method that declares
    // them: kept in Score, the single-threaded path would allocate that closure on every call.
    private int[] ScoreParallel(ImageSet images, int start, int count, int workers)
    {
        int classes = Model.Classes;
        var ws = new Workspace[workers];
        for (int w = 0; w < workers; w++)
        {
            ws[w] = RentWorkspace();
        }
        try
        {
            // A span cannot be captured by the worker lambda; one array per call (not per image) is the price.
            var shared = new int[count * classes];
            EngineExtensions.ForEachImage(start, count, workers, (i, w) =>
                ScoreImage(images.Image(i), ws[w], shared.AsSpan((i - start) * classes, classes)));
            return shared;
        }
        finally
        {
            foreach (var w in ws)
            {
                ReturnWorkspace(w);
            }
        }
    }

    /// <summary>
    /// Seconds spent in each layer over <paramref name="count"/> images on one thread, for the per-layer roofline of
    /// <c>bnn bench</c>.
    /// </summary>
    public double[] ProfileLayers(ImageSet images, int count)
    {
        ArgumentNullException.ThrowIfNull(images);
        EngineExtensions.CheckInput(Model, images, 0, count, count * Model.Classes);
        var ticks = new long[steps.Length];
        var ws = RentWorkspace();
        var scores = new int[Model.Classes];
        try
        {
            for (int i = 0; i < count; i++)
            {
                ScoreImage(images.Image(i), ws, scores, ticks);
            }
        }
        finally
        {
            ReturnWorkspace(ws);
        }
        return ticks.Select(t => (double)t / System.Diagnostics.Stopwatch.Frequency).ToArray();
    }

    /// <summary>
    /// Scores one image with the given workspace; with <paramref name="ticks"/>, adds each step's time; with
    /// <paramref name="split"/>, runs the steps that split on two threads.
    /// </summary>
    internal void ScoreImage(ReadOnlySpan<byte> pixels, Workspace ws, Span<int> scores, long[]? ticks = null, ImageSplitter? split = null)
    {
        split?.Begin();
        try
        {
            ReadOnlySpan<ulong> bits = default;
            for (int i = 0; i < steps.Length; i++)
            {
                long start = ticks is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
                var step = steps[i];
                if (split is not null && step.Splits)
                {
                    // Every step returns its output buffer, so the previous step's output is its buffer.
                    var source = step.PrepareParts(pixels, i == 0 ? [] : ws.Buffers[i - 1], ws.Padded[i]);
                    split.Run(step, source, ws.Buffers[i], ws.Accumulators);
                    bits = ws.Buffers[i];
                }
                else
                {
                    bits = step switch
                    {
                        { TakesPixels: true } s => s.RunPixels(pixels, ws.Buffers[i], ws.Padded[i], ws.Accumulators),
                        DenseStep { IsOutput: true } s => s.RunScores(bits, scores),
                        var s => s.Run(bits, ws.Buffers[i], ws.Padded[i], ws.Accumulators),
                    };
                }
                if (ticks is not null)
                {
                    ticks[i] += System.Diagnostics.Stopwatch.GetTimestamp() - start;
                }
            }
        }
        finally
        {
            split?.End();
        }
    }

    /// <summary>The splitter, or null while another call holds it (that call's images are split; this one's are not).</summary>
    private ImageSplitter? TryRentSplitter() => Interlocked.Exchange(ref splitterInUse, 1) == 0
        ? splitter ??= new ImageSplitter(steps.Max(s => s.AccumulatorCount))
        : null;

    // A lock, not a lock-free collection: a Score call takes it twice, and the steady state must allocate nothing.
    private Workspace RentWorkspace()
    {
        lock (workspaceLock)
        {
            return idleWorkspaces.TryPop(out var ws) ? ws : new Workspace(steps);
        }
    }

    private void ReturnWorkspace(Workspace ws)
    {
        lock (workspaceLock)
        {
            idleWorkspaces.Push(ws);
        }
    }

    /// <summary>Per-worker buffers: each step's output and (for padded convs) its padded input.</summary>
    internal sealed class Workspace
    {
        public Workspace(PackedStep[] steps)
        {
            Buffers = steps.Select(s => new ulong[s.OutputWords]).ToArray();
            Padded = steps.Select(s => s.PaddedWords > 0 ? new ulong[s.PaddedWords] : []).ToArray();
            Accumulators = new int[steps.Max(s => s.AccumulatorCount)];
        }

        /// <summary>Scratch for one step's raw accumulators, reused by every step.</summary>
        public int[] Accumulators { get; }

        public ulong[][] Buffers { get; }

        public ulong[][] Padded { get; }
    }
}

/// <summary>One compiled layer of the packed engine.</summary>
internal abstract class PackedStep
{
    public int OutputWords { get; protected init; }

    public int PaddedWords { get; protected init; }

    /// <summary>Accumulators a step produces per image (0 for steps without a threshold).</summary>
    public virtual int AccumulatorCount => 0;

    /// <summary>Whether the step reads the image's pixels (the input layer) instead of the previous step's bits.</summary>
    public virtual bool TakesPixels => false;

    public virtual ReadOnlySpan<ulong> Run(ReadOnlySpan<ulong> input, ulong[] output, ulong[] padded, int[] acc) =>
        throw new InvalidOperationException();

    public virtual ReadOnlySpan<ulong> RunPixels(ReadOnlySpan<byte> pixels, ulong[] output, ulong[] padded, int[] acc) =>
        throw new InvalidOperationException();

    /// <summary>Raw accumulators, position-major (conv and dense steps only).</summary>
    public virtual void Accumulate(ReadOnlySpan<ulong> input, ulong[] padded, Span<int> acc) =>
        throw new InvalidOperationException();

    /// <summary>Whether one image's output positions can be computed in parts on several threads (<see cref="ImageSplitter"/>).</summary>
    public virtual bool Splits => false;

    /// <summary>
    /// The work every part shares, done once on the calling thread (a padded copy, an interleaved image); returns what
    /// the parts read. <paramref name="input"/> is the previous step's output, or empty for a step that takes pixels.
    /// </summary>
    public virtual ulong[] PrepareParts(ReadOnlySpan<byte> pixels, ulong[] input, ulong[] padded) =>
        throw new InvalidOperationException();

    /// <summary>
    /// Part <paramref name="part"/> of <paramref name="parts"/>: the output of a contiguous slice of positions, from
    /// <see cref="PrepareParts"/>' result. Parts write disjoint words of <paramref name="output"/>, each with its own
    /// <paramref name="acc"/>; together they equal <see cref="Run"/>.
    /// </summary>
    public virtual void RunPart(ulong[] source, ulong[] output, int[] acc, int part, int parts) =>
        throw new InvalidOperationException();

    /// <summary>
    /// Words from <paramref name="word"/> to the next 64-byte line (0-7). A step whose scratch takes 512-bit stores
    /// starts it there: on Intel's Emerald Rapids an access that straddles two lines takes two slots, and an image
    /// with the bit-sliced conv1 ran 117-118 µs where its scratch started on a line against 129-135 otherwise (six
    /// engines in one process). The address is read unpinned: a collection that then moves the array costs speed, not
    /// correctness.
    /// </summary>
    internal static unsafe int WordsToLine(ref ulong word) =>
        (int)((64 - ((nuint)Unsafe.AsPointer(ref word) % 64)) % 64 / sizeof(ulong));

    /// <summary>
    /// [From, To) of <paramref name="count"/> items for part <paramref name="part"/> of <paramref name="parts"/>: equal
    /// slices, each starting at a multiple of <paramref name="align"/>, the last taking the remainder.
    /// </summary>
    internal static (int From, int To) PartRange(int count, int part, int parts, int align)
    {
        int per = ((count / parts) + align - 1) / align * align;
        int from = Math.Min(count, part * per);
        return (from, part == parts - 1 ? count : Math.Min(count, from + per));
    }

    /// <summary>Thresholds position-major accumulators into packed bits, one pixel of ⌈K/64⌉ words per position.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    protected static void BinarizePositions(ReadOnlySpan<int> acc, Threshold threshold, int positions, int channels, Span<ulong> output)
    {
        int words = BitConvention.Words(channels);
        var bounds = threshold.Bound;
        var flips = threshold.FlipWords;
        // 16 channels per compare where 512-bit vectors run natively, else 8.
        int lanes = Vector512.IsHardwareAccelerated ? Vector512<int>.Count : Vector256<int>.Count;
        for (int p = 0; p < positions; p++)
        {
            var dst = output.Slice(p * words, words);
            var a = acc.Slice(p * channels, channels);
            for (int w = 0; w < words; w++)
            {
                // Bit set for −1: not ((a ≥ bound) ≠ flip). A vector of channels per compare; the tail one by one.
                int first = w * 64, count = Math.Min(64, channels - first);
                ulong ge = 0;
                int j = 0;
                for (; j + lanes <= count; j += lanes)
                {
                    ulong mask = lanes == Vector512<int>.Count
                        ? Vector512.GreaterThanOrEqual(Vector512.Create(a.Slice(first + j, lanes)), Vector512.Create(bounds.AsSpan(first + j, lanes))).ExtractMostSignificantBits()
                        : Vector256.GreaterThanOrEqual(Vector256.Create(a.Slice(first + j, lanes)), Vector256.Create(bounds.AsSpan(first + j, lanes))).ExtractMostSignificantBits();
                    ge |= mask << j;
                }
                for (; j < count; j++)
                {
                    ge |= a[first + j] >= bounds[first + j] ? 1UL << j : 0;
                }
                ulong valid = count == 64 ? ulong.MaxValue : (1UL << count) - 1;
                dst[w] = ~(ge ^ flips[w]) & valid;
            }
        }
    }
}

/// <summary>
/// The first layer: integer pixel codes times ±1 weights. Stored as an im2row gather per output pixel and an int
/// dot product per filter; exact in int32 since |sum| ≤ 255·C·kh·kw.
/// </summary>
internal sealed class InputConvStep : PackedStep
{
    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly short[]? masks16; // sign masks (ky, kx, c, K padded to the vector width), when int16 sums suffice
    private readonly int[]? masks32;   // the same in int32, for pixel levels too large for int16
    private readonly int paddedK;
    private readonly int words;

    public InputConvStep(ConvLayer layer, Shape inShape, Shape outShape)
    {
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        words = BitConvention.Words(outShape.Channels);
        OutputWords = outShape.Height * outShape.Width * words;
        int taps = layer.TapsPerOutput;
        // Any partial sum is at most max|level|·taps: int16 lanes (twice as many per vector) when that fits.
        bool narrow = layer.MaxInputMagnitude * taps < short.MaxValue;
        int lanes = narrow ? System.Numerics.Vector<short>.Count : System.Numerics.Vector<int>.Count;
        paddedK = (layer.OutChannels + lanes - 1) / lanes * lanes;
        var masks = new int[taps * paddedK];
        for (int k = 0; k < layer.OutChannels; k++)
        {
            for (int ky = 0; ky < layer.KernelH; ky++)
            {
                for (int kx = 0; kx < layer.KernelW; kx++)
                {
                    for (int c = 0; c < layer.InChannels; c++)
                    {
                        masks[(((((ky * layer.KernelW) + kx) * layer.InChannels) + c) * paddedK) + k] = layer.Weight(k, c, ky, kx) < 0 ? -1 : 0;
                    }
                }
            }
        }
        if (narrow)
        {
            masks16 = masks.Select(m => (short)m).ToArray();
        }
        else
        {
            masks32 = masks;
        }
    }

    public override int AccumulatorCount => outShape.Size;

    /// <summary>
    /// Raw accumulators, position-major: acc[(oy·Wo + ox)·K + k]. Vectorized across filters: each tap's level is
    /// broadcast and added to or subtracted from a vector of filters' sums, which stay in a register over all taps.
    /// </summary>
    public void Accumulate(ReadOnlySpan<byte> pixels, Span<int> acc)
    {
        if (masks16 is not null)
        {
            Accumulate<short>(pixels, acc, masks16);
        }
        else
        {
            Accumulate<int>(pixels, acc, masks32!);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Accumulate<T>(ReadOnlySpan<byte> pixels, Span<int> acc, T[] masks)
        where T : unmanaged, System.Numerics.IBinaryInteger<T>
    {
        int taps = layer.TapsPerOutput;
        int plane = inShape.Height * inShape.Width;
        Span<int> levels = pixels.Length <= 16384 ? stackalloc int[pixels.Length] : new int[pixels.Length];
        PixelCode.EncodeImage(layer, pixels, levels);
        Span<T> patch = taps <= 1024 ? stackalloc T[taps] : new T[taps];
        Span<T> sums = paddedK <= 1024 ? stackalloc T[paddedK] : new T[paddedK];
        int lanes = System.Numerics.Vector<T>.Count;
        for (int oy = 0; oy < outShape.Height; oy++)
        {
            for (int ox = 0; ox < outShape.Width; ox++)
            {
                int t = 0;
                for (int ky = 0; ky < layer.KernelH; ky++)
                {
                    int iy = (oy * layer.Stride) + ky - layer.Padding;
                    for (int kx = 0; kx < layer.KernelW; kx++)
                    {
                        int ix = (ox * layer.Stride) + kx - layer.Padding;
                        bool inside = iy >= 0 && iy < inShape.Height && ix >= 0 && ix < inShape.Width;
                        for (int c = 0; c < layer.InChannels; c++)
                        {
                            patch[t++] = inside ? T.CreateTruncating(levels[(c * plane) + (iy * inShape.Width) + ix]) : T.Zero;
                        }
                    }
                }
                // Filters in vector-wide blocks, each block's sums kept in a register across all taps.
                ref T w0 = ref masks[0];
                ref T sumRef = ref sums[0];
                for (int k = 0; k < paddedK; k += lanes)
                {
                    var sum = System.Numerics.Vector<T>.Zero;
                    for (t = 0; t < taps; t++)
                    {
                        // Weights are stored as sign masks (0 for +1, −1 for −1): (v ⊕ m) − m is v or −v, no multiply.
                        var mask = System.Numerics.Vector.LoadUnsafe(ref w0, (nuint)((t * paddedK) + k));
                        sum += (new System.Numerics.Vector<T>(patch[t]) ^ mask) - mask;
                    }
                    System.Numerics.Vector.StoreUnsafe(sum, ref sumRef, (nuint)k);
                }
                var dst = acc.Slice(((oy * outShape.Width) + ox) * layer.OutChannels, layer.OutChannels);
                for (int k = 0; k < dst.Length; k++)
                {
                    dst[k] = int.CreateTruncating(sums[k]);
                }
            }
        }
    }

    public override bool TakesPixels => true;

    public override ReadOnlySpan<ulong> RunPixels(ReadOnlySpan<byte> pixels, ulong[] output, ulong[] padded, int[] acc)
    {
        Accumulate(pixels, acc);
        BinarizePositions(acc, layer.Threshold, outShape.Height * outShape.Width, layer.OutChannels, output);
        return output;
    }

}

/// <summary>
/// A binary conv on packed bits. For each output pixel and filter, each kernel row's kw taps are kw·words
/// contiguous words of the (padded) input, so one XOR-popcount per kernel row covers them.
/// </summary>
internal sealed class BinaryConvStep : PackedStep
{
    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly PopCountKernel kernel;
    private readonly ulong[] weights; // (K, ky, kx, words)
    private readonly ulong[]? blocked; // (⌈K/8⌉, ky·kx·words, 8) for the filter-blocked kernel
    private readonly ByteCounter counter; // the filter-blocked kernel's
    private readonly int[] pairedBounds = []; // per block of 8 filters, their bounds twice (FilterBlockedPopCount.PairBounds)
    private readonly ulong[] padPixel;
    private readonly int[]? zeroPadCorrection; // position-major (Ho·Wo, K); null unless the layer pads with 0
    private readonly int inWords;
    private readonly int outWords;
    private readonly int paddedWidth;

    public BinaryConvStep(ConvLayer layer, Shape inShape, Shape outShape, PopCountKernel kernel)
    {
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        this.kernel = kernel;
        inWords = BitConvention.Words(inShape.Channels);
        outWords = BitConvention.Words(outShape.Channels);
        OutputWords = outShape.Height * outShape.Width * outWords;
        paddedWidth = inShape.Width + (2 * layer.Padding);
        PaddedWords = layer.Padding > 0 ? (inShape.Height + (2 * layer.Padding)) * paddedWidth * inWords : 0;
        padPixel = new ulong[inWords];
        for (int w = 0; w < inWords; w++)
        {
            padPixel[w] = BitConvention.PadWord(layer.PadValue, inShape.Channels, w);
        }
        weights = PackFilters(layer, inWords);
        if (FilterBlockedPopCount.CounterFor(kernel) is { } blockedCounter)
        {
            counter = blockedCounter;
            blocked = FilterBlockedPopCount.Interleave(weights, layer.OutChannels, layer.KernelH * layer.KernelW * inWords);
            pairedBounds = FilterBlockedPopCount.PairBounds(layer.Threshold.Bound);
        }
        if (layer.Padding > 0 && layer.PadValue == 0)
        {
            zeroPadCorrection = ZeroPadCorrection(layer, inShape, outShape);
        }
    }

    /// <summary>
    /// Zero padding is run as +1 padding (bit 0), which adds w to the sum for every padded tap; this is that excess per
    /// output position and filter, subtracted after the popcount. It is nonzero only at the borders.
    /// </summary>
    internal static int[] ZeroPadCorrection(ConvLayer layer, Shape inShape, Shape outShape)
    {
        var excess = new int[outShape.Height * outShape.Width * layer.OutChannels];
        for (int oy = 0; oy < outShape.Height; oy++)
        {
            for (int ox = 0; ox < outShape.Width; ox++)
            {
                for (int ky = 0; ky < layer.KernelH; ky++)
                {
                    int iy = (oy * layer.Stride) + ky - layer.Padding;
                    for (int kx = 0; kx < layer.KernelW; kx++)
                    {
                        int ix = (ox * layer.Stride) + kx - layer.Padding;
                        if (iy >= 0 && iy < inShape.Height && ix >= 0 && ix < inShape.Width)
                        {
                            continue;
                        }
                        for (int k = 0; k < layer.OutChannels; k++)
                        {
                            for (int c = 0; c < layer.InChannels; c++)
                            {
                                excess[(((oy * outShape.Width) + ox) * layer.OutChannels) + k] += layer.Weight(k, c, ky, kx);
                            }
                        }
                    }
                }
            }
        }
        return excess;
    }

    /// <summary>Packs filters into (K, ky, kx, words) order, padding bits 0.</summary>
    internal static ulong[] PackFilters(ConvLayer layer, int inWords)
    {
        int perFilter = layer.KernelH * layer.KernelW * inWords;
        var packed = new ulong[layer.OutChannels * perFilter];
        Span<sbyte> channelValues = new sbyte[layer.InChannels];
        for (int k = 0; k < layer.OutChannels; k++)
        {
            for (int ky = 0; ky < layer.KernelH; ky++)
            {
                for (int kx = 0; kx < layer.KernelW; kx++)
                {
                    for (int c = 0; c < layer.InChannels; c++)
                    {
                        channelValues[c] = layer.Weight(k, c, ky, kx);
                    }
                    BitConvention.Pack(channelValues, packed.AsSpan((k * perFilter) + (((ky * layer.KernelW) + kx) * inWords), inWords));
                }
            }
        }
        return packed;
    }

    public override int AccumulatorCount => outShape.Size;

    public override void Accumulate(ReadOnlySpan<ulong> input, ulong[] padded, Span<int> acc)
    {
        var src = Source(input, padded, out int rowWidth);
        int rowWords = layer.KernelW * inWords;
        int perFilter = layer.KernelH * rowWords;
        int n = layer.TapsPerOutput;
        if (blocked is not null)
        {
            AccumulateBlocked(src, rowWidth, rowWords, perFilter, n, acc, [], 0, outShape.Height * outShape.Width);
        }
        else
        {
            AccumulatePerFilter(src, rowWidth, rowWords, perFilter, n, acc);
        }
        if (zeroPadCorrection is not null)
        {
            for (int i = 0; i < zeroPadCorrection.Length; i++)
            {
                acc[i] -= zeroPadCorrection[i];
            }
        }
    }

    /// <summary>The input, or its padded copy when the layer pads; <paramref name="rowWidth"/> is that source's width.</summary>
    private ReadOnlySpan<ulong> Source(ReadOnlySpan<ulong> input, ulong[] padded, out int rowWidth)
    {
        if (layer.Padding == 0)
        {
            rowWidth = inShape.Width;
            return input;
        }
        FillPadded(input, padded);
        rowWidth = paddedWidth;
        return padded;
    }

    /// <summary>
    /// Counts positions four at a time against 8 filters per step (the last one to three in pairs). With an
    /// <paramref name="output"/>, the four are read in place and thresholded in registers, straight into packed bits,
    /// and the last ones from the first 2K accumulators: nothing goes out to the whole layer's accumulators and back
    /// (conv1's would be 200 KB). Without one, patches are gathered and the dot products kept, position-major.
    /// Positions [<paramref name="from"/>, <paramref name="to"/>) only: a part of the image (<see cref="PackedStep.RunPart"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void AccumulateBlocked(ReadOnlySpan<ulong> src, int rowWidth, int rowWords, int perFilter, int n, Span<int> acc, Span<ulong> output,
        int from, int to)
    {
        Span<ulong> patches = 4 * perFilter <= 1024 ? stackalloc ulong[4 * perFilter] : new ulong[4 * perFilter];
        int k = layer.OutChannels, wo = outShape.Width;
        bool fused = !output.IsEmpty;
        int p = from;
        for (; p + 4 <= to; p += 4)
        {
            if (fused)
            {
                // Read in place as kh runs of the source: gathering the four patches first cost about 4 % of the image.
                Span<int> starts = [Start(p, wo, rowWidth), Start(p + 1, wo, rowWidth), Start(p + 2, wo, rowWidth), Start(p + 3, wo, rowWidth)];
                FilterBlockedPopCount.Threshold4(src, starts, layer.KernelH, rowWords, rowWidth * inWords, blocked, k, n, pairedBounds, layer.Threshold.FlipWords,
                    output.Slice(p * outWords, 4 * outWords), counter);
                continue;
            }
            for (int i = 0; i < 4; i++)
            {
                GatherPatch(src, (p + i) / wo, (p + i) % wo, rowWidth, rowWords, patches.Slice(i * perFilter, perFilter));
            }
            FilterBlockedPopCount.DotProducts4(patches, blocked, k, n, acc.Slice(p * k, 4 * k), counter);
        }
        for (; p < to; p += 2)
        {
            // An odd last position is counted alone.
            int q = Math.Min(p + 1, to - 1);
            var patchA = patches[..perFilter];
            var patchB = patches.Slice(perFilter, perFilter);
            GatherPatch(src, p / wo, p % wo, rowWidth, rowWords, patchA);
            var dotA = fused ? acc[..k] : acc.Slice(p * k, k);
            if (q == p)
            {
                FilterBlockedPopCount.DotProducts(patchA, blocked, k, n, dotA, counter);
            }
            else
            {
                GatherPatch(src, q / wo, q % wo, rowWidth, rowWords, patchB);
                FilterBlockedPopCount.DotProducts(patchA, patchB, blocked, k, n, dotA, fused ? acc.Slice(k, k) : acc.Slice(q * k, k), counter);
            }
            if (fused)
            {
                BinarizePositions(acc[..(2 * k)], layer.Threshold, q - p + 1, k, output.Slice(p * outWords, (q - p + 1) * outWords));
            }
        }
    }

    /// <summary>Where position <paramref name="position"/>'s patch starts in the (padded) source.</summary>
    private int Start(int position, int wo, int rowWidth) => ((((position / wo) * layer.Stride) * rowWidth) + ((position % wo) * layer.Stride)) * inWords;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void GatherPatch(ReadOnlySpan<ulong> src, int oy, int ox, int rowWidth, int rowWords, Span<ulong> patch)
    {
        int baseIndex = (((oy * layer.Stride) * rowWidth) + (ox * layer.Stride)) * inWords;
        ref ulong from = ref Unsafe.AsRef(in src[baseIndex]);
        ref ulong to = ref patch[0];
        // A kernel row is a few words (3 for 64 channels): a plain loop, where a memmove call per row cost a quarter of conv1.
        for (int ky = 0; ky < layer.KernelH; ky++)
        {
            ref ulong row = ref Unsafe.Add(ref from, ky * rowWidth * inWords);
            ref ulong dst = ref Unsafe.Add(ref to, ky * rowWords);
            for (int w = 0; w < rowWords; w++)
            {
                Unsafe.Add(ref dst, w) = Unsafe.Add(ref row, w);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void AccumulatePerFilter(ReadOnlySpan<ulong> src, int rowWidth, int rowWords, int perFilter, int n, Span<int> acc)
    {
        for (int oy = 0; oy < outShape.Height; oy++)
        {
            for (int ox = 0; ox < outShape.Width; ox++)
            {
                var dst = acc.Slice(((oy * outShape.Width) + ox) * layer.OutChannels, layer.OutChannels);
                int baseIndex = (((oy * layer.Stride) * rowWidth) + (ox * layer.Stride)) * inWords;
                for (int k = 0; k < layer.OutChannels; k++)
                {
                    int pop = 0;
                    var filter = weights.AsSpan(k * perFilter, perFilter);
                    for (int ky = 0; ky < layer.KernelH; ky++)
                    {
                        pop += XorPopCount.Compute(src.Slice(baseIndex + (ky * rowWidth * inWords), rowWords), filter.Slice(ky * rowWords, rowWords), kernel);
                    }
                    dst[k] = n - (2 * pop);
                }
            }
        }
    }

    // The fused path's last pair borrows 2K accumulators, more than a one-position layer has: that keeps the plain
    // path, as do zero-padded layers, whose correction must reach the sums before the threshold.
    private bool Fused => blocked is not null && zeroPadCorrection is null && outShape.Height * outShape.Width >= 2;

    public override ReadOnlySpan<ulong> Run(ReadOnlySpan<ulong> input, ulong[] output, ulong[] padded, int[] acc)
    {
        if (Fused)
        {
            var src = Source(input, padded, out int rowWidth);
            RunFused(src, rowWidth, output, acc, 0, outShape.Height * outShape.Width);
            return output;
        }
        Accumulate(input, padded, acc);
        BinarizePositions(acc, layer.Threshold, outShape.Height * outShape.Width, layer.OutChannels, output);
        return output;
    }

    /// <summary>Two groups of four positions per part at least: fewer do not pay for the hand-over.</summary>
    public override bool Splits => Fused && outShape.Height * outShape.Width >= 16;

    public override ulong[] PrepareParts(ReadOnlySpan<byte> pixels, ulong[] input, ulong[] padded)
    {
        if (layer.Padding == 0)
        {
            return input;
        }
        FillPadded(input, padded);
        return padded;
    }

    public override void RunPart(ulong[] source, ulong[] output, int[] acc, int part, int parts)
    {
        var (from, to) = PartRange(outShape.Height * outShape.Width, part, parts, align: 4);
        // The prepared source is the input or its padded copy; either way its rows are paddedWidth (W + 2·0 = W) wide.
        RunFused(source, paddedWidth, output, acc, from, to);
    }

    private void RunFused(ReadOnlySpan<ulong> src, int rowWidth, ulong[] output, int[] acc, int from, int to)
    {
        int rowWords = layer.KernelW * inWords;
        AccumulateBlocked(src, rowWidth, rowWords, layer.KernelH * rowWords, layer.TapsPerOutput, acc, output.AsSpan(0, OutputWords), from, to);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FillPadded(ReadOnlySpan<ulong> input, Span<ulong> padded)
    {
        int p = layer.Padding;
        int paddedHeight = inShape.Height + (2 * p);
        for (int y = 0; y < paddedHeight; y++)
        {
            for (int x = 0; x < paddedWidth; x++)
            {
                var dst = padded.Slice(((y * paddedWidth) + x) * inWords, inWords);
                int iy = y - p, ix = x - p;
                if (iy >= 0 && iy < inShape.Height && ix >= 0 && ix < inShape.Width)
                {
                    input.Slice(((iy * inShape.Width) + ix) * inWords, inWords).CopyTo(dst);
                }
                else
                {
                    padPixel.CopyTo(dst);
                }
            }
        }
    }
}

/// <summary>Max-pool on packed bits: the AND of the window's words (bit 0 = +1 wins).</summary>
internal sealed class PoolStep : PackedStep
{
    private readonly int size;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly int words;

    public PoolStep(MaxPoolLayer layer, Shape inShape, Shape outShape)
    {
        size = layer.Size;
        this.inShape = inShape;
        this.outShape = outShape;
        words = BitConvention.Words(inShape.Channels);
        OutputWords = outShape.Height * outShape.Width * words;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override ReadOnlySpan<ulong> Run(ReadOnlySpan<ulong> input, ulong[] output, ulong[] padded, int[] acc)
    {
        if (input.Length < inShape.Height * inShape.Width * words)
        {
            throw new ArgumentException("input is smaller than the layer's input shape", nameof(input));
        }
        // Plain refs: with a span slice and a fill per output pixel, this step had cost as much as a small conv.
        ref ulong src0 = ref MemoryMarshal.GetReference(input);
        ref ulong dst = ref MemoryMarshal.GetArrayDataReference(output);
        int rowWords = inShape.Width * words;
        for (int oy = 0; oy < outShape.Height; oy++)
        {
            ref ulong top = ref Unsafe.Add(ref src0, oy * size * rowWords);
            for (int ox = 0; ox < outShape.Width; ox++)
            {
                ref ulong cell = ref Unsafe.Add(ref top, ox * size * words);
                for (int w = 0; w < words; w++, dst = ref Unsafe.Add(ref dst, 1))
                {
                    ulong v;
                    if (size == 2)
                    {
                        v = Unsafe.Add(ref cell, w) & Unsafe.Add(ref cell, words + w)
                            & Unsafe.Add(ref cell, rowWords + w) & Unsafe.Add(ref cell, rowWords + words + w);
                    }
                    else
                    {
                        v = ulong.MaxValue;
                        for (int dy = 0; dy < size; dy++)
                        {
                            for (int dx = 0; dx < size; dx++)
                            {
                                v &= Unsafe.Add(ref cell, (dy * rowWords) + (dx * words) + w);
                            }
                        }
                    }
                    dst = v;
                }
            }
        }
        return output;
    }
}

/// <summary>
/// A binary dense (or output) layer on the packed activation. Weights are permuted at compile time from PyTorch's
/// (C, H, W) flattening into the engine's (H, W, words) layout, padding bits 0, so the dot product is one
/// XOR-popcount over the whole activation.
/// </summary>
internal sealed class DenseStep : PackedStep
{
    private readonly ulong[] weights;
    private readonly Threshold? threshold;
    private readonly int rowWords;
    private readonly int inFeatures;
    private readonly int outFeatures;
    private readonly PopCountKernel kernel;
    private readonly ulong[]? blocked; // (⌈out/8⌉, rowWords, 8) for the filter-blocked kernel: 8 outputs per broadcast input word
    private readonly ByteCounter counter; // the filter-blocked kernel's

    public DenseStep(sbyte[] flatWeights, Threshold? threshold, Shape inShape, int outFeatures, PopCountKernel kernel)
    {
        this.threshold = threshold;
        this.outFeatures = outFeatures;
        this.kernel = kernel;
        inFeatures = inShape.Size;
        int words = BitConvention.Words(inShape.Channels);
        int pixels = inShape.Height * inShape.Width;
        rowWords = pixels * words;
        weights = new ulong[outFeatures * rowWords];
        for (int o = 0; o < outFeatures; o++)
        {
            for (int c = 0; c < inShape.Channels; c++)
            {
                for (int pixel = 0; pixel < pixels; pixel++)
                {
                    int flat = (c * pixels) + pixel;
                    weights[(o * rowWords) + (pixel * words) + (c >> 6)] |= BitConvention.Bit(flatWeights[(o * inFeatures) + flat]) << (c & 63);
                }
            }
        }
        OutputWords = BitConvention.Words(outFeatures);
        if (FilterBlockedPopCount.CounterFor(kernel) is { } blockedCounter)
        {
            counter = blockedCounter;
            blocked = FilterBlockedPopCount.Interleave(weights, outFeatures, rowWords);
        }
    }

    public bool IsOutput => threshold is null;

    public override int AccumulatorCount => outFeatures;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Accumulate(ReadOnlySpan<ulong> input, ulong[] padded, Span<int> acc)
    {
        if (blocked is not null)
        {
            FilterBlockedPopCount.DotProducts(input[..rowWords], blocked, outFeatures, inFeatures, acc, counter);
            return;
        }
        for (int o = 0; o < outFeatures; o++)
        {
            acc[o] = inFeatures - (2 * XorPopCount.Compute(input, weights.AsSpan(o * rowWords, rowWords), kernel));
        }
    }

    public override ReadOnlySpan<ulong> Run(ReadOnlySpan<ulong> input, ulong[] output, ulong[] padded, int[] acc)
    {
        Accumulate(input, padded, acc);
        BinarizePositions(acc, threshold!, 1, outFeatures, output);
        return output;
    }

    public ReadOnlySpan<ulong> RunScores(ReadOnlySpan<ulong> input, Span<int> scores)
    {
        Accumulate(input, [], scores);
        return default;
    }
}
