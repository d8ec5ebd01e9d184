using Bnn.Data;
using Bnn.Engine.Kernels;
using Bnn.Engine.Reference;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Engine;

/// <summary>Operations an instrumented <see cref="SharedEngine"/> actually performed, per layer index.</summary>
public sealed class OpCounts
{
    internal OpCounts(int layers)
    {
        TapOps = new long[layers];
        AccumulateAdds = new long[layers];
    }

    /// <summary>Tap ops per layer: taps applied to compute or correct 2-D results (conv), or dot-product taps (dense).</summary>
    public long[] TapOps { get; }

    /// <summary>Additions that summed per-channel 2-D results into conv outputs, per layer.</summary>
    public long[] AccumulateAdds { get; }

    internal void Add(OpCounts other)
    {
        for (int i = 0; i < TapOps.Length; i++)
        {
            TapOps[i] += other.TapOps[i];
            AccumulateAdds[i] += other.AccumulateAdds[i];
        }
    }
}

/// <summary>How <see cref="SharedEngine"/> picks, per conv layer, between its shared plane conv and the dense kernel.</summary>
public enum LayerSelection
{
    /// <summary>
    /// Time whole images with each on this machine when the engine is built, and keep the plane conv where it makes
    /// them 5 % faster than the fast engine's dense kernel (outputs are identical either way).
    /// </summary>
    Auto,

    /// <summary>Every layer the plane conv supports runs shared (tests, and measuring the shared kernel itself).</summary>
    Shared,
}

/// <summary>What the shared engine runs for one conv layer, and why.</summary>
/// <param name="Layer">Layer index.</param>
/// <param name="Shared">Whether the layer runs through its plan (else the dense packed kernel).</param>
/// <param name="DenseMicroseconds">Measured time of a whole image with the dense kernel at this layer (NaN if not measured).</param>
/// <param name="SharedMicroseconds">Measured time of a whole image with the shared plane conv at this layer (NaN if not measured).</param>
/// <param name="Reason">Why.</param>
public sealed record LayerChoice(int Layer, bool Shared, double DenseMicroseconds, double SharedMicroseconds, string Reason);

/// <summary>
/// Executes conv layers through their sharing plans: per input channel, each needed 2-D result is computed once
/// (from scratch, or derived from an earlier one by correcting the taps where the codes differ), repeats and inverses
/// reuse it with a sign, and each output accumulates Σ_c sign·R. Layers without a plan use the exact plan (repeats and
/// inverses only). Scores are bit-identical to the dense engines for the weights the plan encodes.
/// <para>It runs as the packed pipeline with the planned conv layers swapped for <see cref="PlaneConvStep"/> (vectorized
/// over pixels); with <see cref="LayerSelection.Auto"/> a layer keeps the dense kernel where that measured faster here,
/// and <see cref="Choices"/> records each decision. With <see cref="Instrumented"/> set it instead runs a plain
/// implementation of the same plans that counts the tap ops and additions it performs (the cost model's terms).</para>
/// </summary>
public sealed class SharedEngine : IEngine
{
    private readonly LayerPlan?[] plans;
    private readonly int[]?[] denseMasks;
    private readonly PackedEngine? pipeline;

    /// <summary>Prepares <paramref name="model"/>, planning exactly any conv layer that carries no plan.</summary>
    public SharedEngine(BnnModel model, bool instrumented = false, LayerSelection selection = LayerSelection.Auto)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
        Instrumented = instrumented;
        plans = new LayerPlan?[model.Layers.Count];
        foreach (var (i, conv) in model.ConvLayers)
        {
            plans[i] = model.Plans.TryGetValue(i, out var p) ? p : FilterCode.Supports(conv) ? Planner.PlanExact(conv) : null;
        }
        denseMasks = new int[]?[model.Layers.Count];
        Counts = new OpCounts(model.Layers.Count);
        if (!instrumented)
        {
            (pipeline, Choices) = BuildPipeline(selection);
        }
    }

    /// <inheritdoc/>
    public string Name => "shared";

    /// <inheritdoc/>
    public BnnModel Model { get; }

    /// <summary>Whether operations are counted.</summary>
    public bool Instrumented { get; }

    /// <summary>Operations performed so far (all images), when instrumented.</summary>
    public OpCounts Counts { get; }

    /// <summary>The plan used for each layer (null for non-conv layers).</summary>
    public IReadOnlyList<LayerPlan?> Plans => plans;

    /// <summary>Per conv layer, whether it runs shared or dense and why (empty when instrumented).</summary>
    public IReadOnlyList<LayerChoice> Choices { get; } = [];

    /// <summary>
    /// The packed pipeline with each supported layer's plane conv: forced in, or (<see cref="LayerSelection.Auto"/>)
    /// kept where whole images run faster with it than with the fast engine's dense kernel for the layer, timed the
    /// same way the fast engine chooses its kernels.
    /// </summary>
    private (PackedEngine Pipeline, List<LayerChoice> Choices) BuildPipeline(LayerSelection selection)
    {
        var planeConvs = new Dictionary<int, PackedStep>();
        var unsupported = new Dictionary<int, string>();
        foreach (var (i, conv) in Model.ConvLayers)
        {
            string? reason = plans[i] is null ? "dense: no plan (kernel too large to plan)"
                : conv.Stride != 1 ? "dense: stride ≠ 1 (the plane conv needs stride 1)"
                : !PlaneConvStep.Supports(conv) ? "dense: sums exceed the plane conv's lanes"
                : null;
            if (reason is null)
            {
                planeConvs[i] = PlaneConvStep.Create(conv, plans[i]!, Model.InputShapes[i], Model.OutputShapes[i]);
            }
            else
            {
                unsupported[i] = reason;
            }
        }
        bool forced = selection == LayerSelection.Shared;
        var pipeline = forced ? new PackedEngine(Model, XorPopCount.Best, planeConvs, chooseConvs: true)
            : new PackedEngine(Model, XorPopCount.Best, null, chooseConvs: true, alternatives: planeConvs);
        var timed = pipeline.AlternativeChoices.ToDictionary(c => c.Layer);
        var bitSliced = pipeline.ConvChoices.Where(c => c.BitSliced).Select(c => c.Layer).ToHashSet();
        var choices = Model.ConvLayers.Select(p =>
        {
            if (unsupported.TryGetValue(p.Index, out var reason))
            {
                return new LayerChoice(p.Index, false, double.NaN, double.NaN, reason);
            }
            if (forced)
            {
                return new LayerChoice(p.Index, true, double.NaN, double.NaN, "shared: forced");
            }
            var c = timed[p.Index];
            string dense = bitSliced.Contains(p.Index) ? "dense (bit-sliced)" : "dense";
            return new LayerChoice(p.Index, c.Kept, c.CompiledMicroseconds, c.AlternativeMicroseconds,
                c.Kept ? $"shared: measured faster than {dense}" : $"{dense}: measured faster");
        }).ToList();
        return (pipeline, choices);
    }

    /// <inheritdoc/>
    public void Score(ImageSet images, int start, int count, Span<int> scores, int threads = 1)
    {
        if (pipeline is not null)
        {
            pipeline.Score(images, start, count, scores, threads);
            return;
        }
        EngineExtensions.CheckInput(Model, images, start, count, scores.Length);
        ScoreInstrumented(images, start, count, threads).CopyTo(scores);
    }

    // Separate from Score because a lambda's captured parameters are allocated on entry to the method that declares
    // them: kept in Score, the pipeline path would allocate that closure on every call.
    private int[] ScoreInstrumented(ImageSet images, int start, int count, int threads)
    {
        int classes = Model.Classes;
        var result = new int[count * classes];
        var perWorker = new OpCounts?[Math.Max(1, threads)];
        EngineExtensions.ForEachImage(start, count, threads, (i, w) =>
        {
            var counts = perWorker[w] ??= new OpCounts(Model.Layers.Count);
            ScoreImage(images.Image(i), counts).CopyTo(result.AsSpan((i - start) * classes));
        });
        lock (Counts)
        {
            foreach (var c in perWorker)
            {
                if (c is not null)
                {
                    Counts.Add(c);
                }
            }
        }
        return result;
    }

    /// <summary>Seconds spent in each layer over <paramref name="count"/> images on one thread (for <c>bnn bench</c>).</summary>
    public double[] ProfileLayers(ImageSet images, int count) =>
        (pipeline ?? throw new InvalidOperationException("an instrumented engine is not profiled")).ProfileLayers(images, count);

    private int[] ScoreImage(ReadOnlySpan<byte> pixels, OpCounts counts)
    {
        var x = new int[pixels.Length];
        PixelCode.EncodeImage((ConvLayer)Model.Layers[0], pixels, x);
        for (int l = 0; l < Model.Layers.Count; l++)
        {
            var inShape = Model.InputShapes[l];
            var outShape = Model.OutputShapes[l];
            switch (Model.Layers[l])
            {
                case ConvLayer c when plans[l] is { } plan:
                    x = ReferenceEngine.Binarize(SharedConv(c, plan, x, inShape, outShape, counts, l), c.Threshold, outShape.Height * outShape.Width);
                    break;
                case ConvLayer c:
                    x = ReferenceEngine.Binarize(ReferenceEngine.Conv(c, x, inShape, outShape), c.Threshold, outShape.Height * outShape.Width);
                    counts.TapOps[l] += Cost.CostModel.ConvBaselineTapOps(c, outShape);
                    break;
                case MaxPoolLayer p:
                    x = ReferenceEngine.MaxPool(p, x, inShape, outShape);
                    break;
                case DenseLayer d:
                    x = ReferenceEngine.Binarize(Dense(l, d.Weights, d.InFeatures, d.OutFeatures, x), d.Threshold, 1);
                    CountDense(counts, l);
                    break;
                case OutputLayer o:
                    x = Dense(l, o.Weights, o.InFeatures, o.Classes, x);
                    CountDense(counts, l);
                    break;
            }
        }
        return x;
    }

    /// <summary>
    /// A dense layer on ±1 values as vector dot products: weights kept as sign masks (0 for +1, −1 for −1), so
    /// w·x = (x ⊕ m) − m with no multiply. The dense layers are not shared; this only keeps them from dominating.
    /// </summary>
    private int[] Dense(int index, sbyte[] weights, int inFeatures, int outFeatures, int[] x)
    {
        var masks = denseMasks[index] ??= weights.Select(w => w < 0 ? -1 : 0).ToArray();
        var y = new int[outFeatures];
        int lanes = System.Numerics.Vector<int>.Count;
        for (int o = 0; o < outFeatures; o++)
        {
            var row = masks.AsSpan(o * inFeatures, inFeatures);
            var sum = System.Numerics.Vector<int>.Zero;
            int i = 0;
            for (; i + lanes <= inFeatures; i += lanes)
            {
                var m = new System.Numerics.Vector<int>(row.Slice(i, lanes));
                sum += (new System.Numerics.Vector<int>(x.AsSpan(i, lanes)) ^ m) - m;
            }
            int total = System.Numerics.Vector.Sum(sum);
            for (; i < inFeatures; i++)
            {
                total += (x[i] ^ row[i]) - row[i];
            }
            y[o] = total;
        }
        return y;
    }

    private void CountDense(OpCounts counts, int index) => counts.TapOps[index] += Cost.CostModel.LayerTapOps(Model, index);

    /// <summary>
    /// The shared conv: per channel, 2-D results R for the plan's nodes, then acc[k] += sign·R[node(k, c)].
    /// For a node v derived from parent u: if H(u, v) ≤ n − H(u, v), v equals u except on the set D of differing
    /// taps and R_v = R_u − 2·Σ_{t∈D} u_t·x_t; otherwise v equals −u except on D' (|D'| = n − H) and
    /// R_v = −R_u + 2·Σ_{t∈D'} u_t·x_t. Either way the correction applies d = min(H, n − H) taps.
    /// </summary>
    private static int[] SharedConv(ConvLayer layer, LayerPlan plan, int[] x, Shape inShape, Shape outShape, OpCounts counts, int index)
    {
        int n = plan.Taps;
        int positions = outShape.Height * outShape.Width;
        var acc = new int[layer.OutChannels * positions];
        var results = new int[plan.Nodes.Count][];
        var started = new bool[layer.OutChannels];
        // Filters grouped by channel so each channel's nodes are live only while that channel is accumulated.
        var byChannel = new List<int>[layer.InChannels];
        for (int i = 0; i < plan.Nodes.Count; i++)
        {
            (byChannel[plan.Nodes[i].Channel] ??= []).Add(i);
        }
        var taps = new int[n];
        var padded = new PaddedPlane(layer, inShape);
        for (int c = 0; c < layer.InChannels; c++)
        {
            padded.Load(x, c);
            foreach (int i in byChannel[c] ?? [])
            {
                var node = plan.Nodes[i];
                var r = new int[positions];
                if (node.IsRoot)
                {
                    for (int t = 0; t < n; t++)
                    {
                        taps[t] = t;
                    }
                    ApplyTaps(layer, node.Code, taps.AsSpan(0, n), padded, outShape, r, 1, counts, index);
                }
                else
                {
                    int parentCode = plan.Nodes[node.Parent].Code;
                    var parent = results[node.Parent];
                    var (negated, diff) = plan.Derivation(i);
                    bool sameOrientation = !negated;
                    int count = 0;
                    for (int t = 0; t < n; t++)
                    {
                        if (((diff >> t) & 1) != 0)
                        {
                            taps[count++] = t;
                        }
                    }
                    if (sameOrientation)
                    {
                        parent.CopyTo(r, 0);
                    }
                    else
                    {
                        Kernels.IntRows.Negate(parent, r);
                    }
                    // Σ_{t∈D} u_t x_t, scaled by −2 (same orientation) or +2 (opposite): see the method summary.
                    ApplyTaps(layer, parentCode, taps.AsSpan(0, count), padded, outShape, r, sameOrientation ? -2 : 2, counts, index);
                }
                results[i] = r;
            }
            for (int k = 0; k < layer.OutChannels; k++)
            {
                int f = (k * layer.InChannels) + c;
                var r = results[plan.Assignment[f]];
                var dst = acc.AsSpan(k * positions, positions);
                int sign = plan.Signs[f];
                if (!started[k])
                {
                    started[k] = true;
                    Kernels.IntRows.Scale(r, sign, dst);
                }
                else
                {
                    Kernels.IntRows.AddScaled(r, sign, dst);
                    counts.AccumulateAdds[index] += positions;
                }
            }
            foreach (int i in byChannel[c] ?? [])
            {
                results[i] = null!;
            }
        }
        return acc;
    }

    /// <summary>
    /// r[p] += scale · Σ_{t ∈ taps} code_t · x(p, t), one tap at a time over whole output rows so the inner loop is
    /// a vector multiply-add; counts one tap op per tap per output position.
    /// </summary>
    private static void ApplyTaps(ConvLayer layer, int code, ReadOnlySpan<int> taps, PaddedPlane x, Shape outShape,
        int[] r, int scale, OpCounts counts, int index)
    {
        int kw = layer.KernelW, s = layer.Stride, wo = outShape.Width;
        foreach (int t in taps)
        {
            int coefficient = ((code >> t) & 1) != 0 ? -scale : scale;
            int ky = t / kw, kx = t % kw;
            for (int oy = 0; oy < outShape.Height; oy++)
            {
                var src = x.Values.AsSpan((((oy * s) + ky) * x.Width) + kx);
                var dst = r.AsSpan(oy * wo, wo);
                if (s == 1)
                {
                    Kernels.IntRows.AddScaled(src[..wo], coefficient, dst);
                }
                else
                {
                    for (int ox = 0; ox < wo; ox++)
                    {
                        dst[ox] += coefficient * src[ox * s];
                    }
                }
            }
        }
        counts.TapOps[index] += (long)taps.Length * outShape.Height * outShape.Width;
    }

    /// <summary>One input channel with its border filled with the layer's pad value.</summary>
    private sealed class PaddedPlane
    {
        private readonly ConvLayer layer;
        private readonly Shape inShape;

        public PaddedPlane(ConvLayer layer, Shape inShape)
        {
            this.layer = layer;
            this.inShape = inShape;
            Width = inShape.Width + (2 * layer.Padding);
            Values = new int[(inShape.Height + (2 * layer.Padding)) * Width];
        }

        public int Width { get; }

        public int[] Values { get; }

        public void Load(int[] x, int channel)
        {
            int p = layer.Padding;
            if (p > 0)
            {
                Values.AsSpan().Fill(layer.PadValue);
            }
            int plane = channel * inShape.Height * inShape.Width;
            for (int y = 0; y < inShape.Height; y++)
            {
                x.AsSpan(plane + (y * inShape.Width), inShape.Width).CopyTo(Values.AsSpan(((y + p) * Width) + p));
            }
        }
    }
}
