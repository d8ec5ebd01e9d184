using Bnn.Data;
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

/// <summary>
/// Executes conv layers through their sharing plans: per input channel, each needed 2-D result is computed once
/// (from scratch, or derived from an earlier one by correcting the taps where the codes differ), repeats and inverses
/// reuse it with a sign, and each output accumulates Σ_c sign·R. Layers without a plan use the exact plan (repeats and
/// inverses only). Scores are bit-identical to the dense engines for the weights the plan encodes. With
/// <see cref="Instrumented"/> set, it counts the tap ops and additions it performs.
/// </summary>
public sealed class SharedEngine : IEngine
{
    private readonly LayerPlan?[] plans;

    /// <summary>Prepares <paramref name="model"/>, planning exactly any conv layer that carries no plan.</summary>
    public SharedEngine(BnnModel model, bool instrumented = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
        Instrumented = instrumented;
        plans = new LayerPlan?[model.Layers.Count];
        foreach (var (i, conv) in model.ConvLayers)
        {
            plans[i] = model.Plans.TryGetValue(i, out var p) ? p : FilterCode.Supports(conv) ? Planner.PlanExact(conv) : null;
        }
        Counts = new OpCounts(model.Layers.Count);
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

    /// <inheritdoc/>
    public void Score(ImageSet images, int start, int count, Span<int> scores, int threads = 1)
    {
        EngineExtensions.CheckInput(Model, images, start, count, scores.Length);
        int classes = Model.Classes;
        var result = new int[count * classes];
        var perWorker = new OpCounts?[Math.Max(1, threads)];
        EngineExtensions.ForEachImage(start, count, threads, (i, w) =>
        {
            var counts = Instrumented ? perWorker[w] ??= new OpCounts(Model.Layers.Count) : null;
            ScoreImage(images.Image(i), counts).CopyTo(result.AsSpan((i - start) * classes));
        });
        if (Instrumented)
        {
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
        }
        result.CopyTo(scores);
    }

    private int[] ScoreImage(ReadOnlySpan<byte> pixels, OpCounts? counts)
    {
        var x = new int[pixels.Length];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = PixelCode.Encode(pixels[i]);
        }
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
                    if (counts is not null)
                    {
                        counts.TapOps[l] += Cost.CostModel.ConvBaselineTapOps(c, outShape);
                    }
                    break;
                case MaxPoolLayer p:
                    x = ReferenceEngine.MaxPool(p, x, inShape, outShape);
                    break;
                case DenseLayer d:
                    x = ReferenceEngine.Binarize(ReferenceEngine.Dense(d.Weights, d.InFeatures, d.OutFeatures, x), d.Threshold, 1);
                    CountDense(counts, l);
                    break;
                case OutputLayer o:
                    x = ReferenceEngine.Dense(o.Weights, o.InFeatures, o.Classes, x);
                    CountDense(counts, l);
                    break;
            }
        }
        return x;
    }

    private void CountDense(OpCounts? counts, int index)
    {
        if (counts is not null)
        {
            counts.TapOps[index] += Cost.CostModel.LayerTapOps(Model, index);
        }
    }

    /// <summary>
    /// The shared conv: per channel, 2-D results R for the plan's nodes, then acc[k] += sign·R[node(k, c)].
    /// For a node v derived from parent u: if H(u, v) ≤ n − H(u, v), v equals u except on the set D of differing
    /// taps and R_v = R_u − 2·Σ_{t∈D} u_t·x_t; otherwise v equals −u except on D' (|D'| = n − H) and
    /// R_v = −R_u + 2·Σ_{t∈D'} u_t·x_t. Either way the correction applies d = min(H, n − H) taps.
    /// </summary>
    private static int[] SharedConv(ConvLayer layer, LayerPlan plan, int[] x, Shape inShape, Shape outShape, OpCounts? counts, int index)
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
        for (int c = 0; c < layer.InChannels; c++)
        {
            foreach (int i in byChannel[c] ?? [])
            {
                var node = plan.Nodes[i];
                var r = new int[positions];
                if (node.IsRoot)
                {
                    int count = 0;
                    for (int t = 0; t < n; t++)
                    {
                        taps[count++] = t;
                    }
                    ApplyTaps(layer, node.Code, taps.AsSpan(0, n), x, inShape, outShape, c, r, 1, counts, index);
                }
                else
                {
                    int parentCode = plan.Nodes[node.Parent].Code;
                    var parent = results[node.Parent];
                    int h = FilterCode.Hamming(parentCode, node.Code);
                    bool sameOrientation = h <= n - h;
                    int diff = sameOrientation ? parentCode ^ node.Code : parentCode ^ node.Code ^ FilterCode.Mask(n);
                    int count = 0;
                    for (int t = 0; t < n; t++)
                    {
                        if (((diff >> t) & 1) != 0)
                        {
                            taps[count++] = t;
                        }
                    }
                    for (int p = 0; p < positions; p++)
                    {
                        r[p] = sameOrientation ? parent[p] : -parent[p];
                    }
                    // Σ_{t∈D} u_t x_t, scaled by −2 (same orientation) or +2 (opposite): see the method summary.
                    ApplyTaps(layer, parentCode, taps.AsSpan(0, count), x, inShape, outShape, c, r, sameOrientation ? -2 : 2, counts, index);
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
                    for (int p = 0; p < positions; p++)
                    {
                        dst[p] = sign * r[p];
                    }
                }
                else
                {
                    for (int p = 0; p < positions; p++)
                    {
                        dst[p] += sign * r[p];
                    }
                    if (counts is not null)
                    {
                        counts.AccumulateAdds[index] += positions;
                    }
                }
            }
            foreach (int i in byChannel[c] ?? [])
            {
                results[i] = null!;
            }
        }
        return acc;
    }

    /// <summary>r[p] += scale · Σ_{t ∈ taps} code_t · x(p, t); counts one tap op per tap per position.</summary>
    private static void ApplyTaps(ConvLayer layer, int code, ReadOnlySpan<int> taps, int[] x, Shape inShape, Shape outShape, int c,
        int[] r, int scale, OpCounts? counts, int index)
    {
        int kw = layer.KernelW;
        int plane = c * inShape.Height * inShape.Width;
        for (int oy = 0; oy < outShape.Height; oy++)
        {
            for (int ox = 0; ox < outShape.Width; ox++)
            {
                int sum = 0;
                foreach (int t in taps)
                {
                    int iy = (oy * layer.Stride) + (t / kw) - layer.Padding;
                    int ix = (ox * layer.Stride) + (t % kw) - layer.Padding;
                    int v = iy >= 0 && iy < inShape.Height && ix >= 0 && ix < inShape.Width ? x[plane + (iy * inShape.Width) + ix] : layer.PadValue;
                    sum += ((code >> t) & 1) != 0 ? -v : v;
                }
                r[(oy * outShape.Width) + ox] += scale * sum;
            }
        }
        if (counts is not null)
        {
            counts.TapOps[index] += (long)taps.Length * outShape.Height * outShape.Width;
        }
    }
}
