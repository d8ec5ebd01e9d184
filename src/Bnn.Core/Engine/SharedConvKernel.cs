using System.Numerics;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Engine;

/// <summary>
/// The shared conv made fast, for binary conv layers with stride 1. A plan turns the layer into, per input channel,
/// a few distinct 2-D results (each a small integer per pixel), then per output channel a ±1-signed sum of C of them.
/// Both parts run over pixels in int16 vector lanes (|sums| ≤ C·n, far inside int16 for any layer we accept) and are
/// tiled by output row: one row of every node's result is computed (roots from n taps, derived nodes from their
/// parent's row with d corrections), then each output channel's row is summed over its C nodes in registers, with
/// the nodes pre-split into added and subtracted lists so the inner loop has no branch. The distinct results are
/// shared across all K outputs: that is where the saving in time comes from. Bit-identical to the dense engines.
/// </summary>
internal sealed class SharedConvKernel
{
    private static readonly int Lanes = Vector<short>.Count;
    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly NodeStep[] nodes;      // in plan order (parents first)
    private readonly int[][] added;         // per output channel: nodes summed with +1
    private readonly int[][] subtracted;    // per output channel: nodes summed with −1
    private readonly int paddedWidth;
    private readonly int paddedHeight;
    private readonly int rowStride;         // Wo rounded up to whole vectors, plus slack for the last tap's shift
    private readonly ThreadLocal<Buffers> buffers;

    /// <summary>
    /// Whether the kernel handles this layer (else the engine uses its general path): stride 1, and every partial
    /// sum (at most 2·max|x|·C·n, derivation corrections included) inside int16. That holds for every binary layer
    /// of up to 1,820 channels and for the input layer of 8-bit images under the standard pixel code.
    /// </summary>
    public static bool Supports(ConvLayer layer) =>
        layer.Stride == 1 && layer.MaxInputMagnitude * layer.TapsPerOutput * 2 < short.MaxValue;

    public SharedConvKernel(ConvLayer layer, LayerPlan plan, Shape inShape, Shape outShape)
    {
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        int n = plan.Taps;
        nodes = new NodeStep[plan.Nodes.Count];
        for (int i = 0; i < nodes.Length; i++)
        {
            var node = plan.Nodes[i];
            if (node.IsRoot)
            {
                nodes[i] = new NodeStep(node.Channel, -1, false, Taps(node.Code, Enumerable.Range(0, n), 1, layer.KernelW));
                continue;
            }
            int parentCode = plan.Nodes[node.Parent].Code;
            var (negated, diff) = plan.Derivation(i);
            nodes[i] = new NodeStep(node.Channel, node.Parent, negated,
                Taps(parentCode, Enumerable.Range(0, n).Where(t => ((diff >> t) & 1) != 0), negated ? 2 : -2, layer.KernelW));
        }
        added = new int[layer.OutChannels][];
        subtracted = new int[layer.OutChannels][];
        for (int k = 0; k < layer.OutChannels; k++)
        {
            var filters = Enumerable.Range(0, layer.InChannels).Select(c => (k * layer.InChannels) + c).ToList();
            added[k] = filters.Where(f => plan.Signs[f] > 0).Select(f => plan.Assignment[f]).ToArray();
            subtracted[k] = filters.Where(f => plan.Signs[f] < 0).Select(f => plan.Assignment[f]).ToArray();
        }
        paddedWidth = inShape.Width + (2 * layer.Padding);
        paddedHeight = inShape.Height + (2 * layer.Padding);
        for (int i = 0; i < nodes.Length; i++)
        {
            var taps = nodes[i].Taps;
            int[] Offsets(short coefficient) => taps.Where(t => t.Coefficient == coefficient).Select(t => (t.Ky * paddedWidth) + t.Kx).ToArray();
            nodes[i] = nodes[i] with { Plus = Offsets(1), Minus = Offsets(-1), PlusTwo = Offsets(2), MinusTwo = Offsets(-2) };
        }
        rowStride = ((outShape.Width + Lanes - 1) / Lanes * Lanes) + Lanes;
        buffers = new ThreadLocal<Buffers>(() => new Buffers(
            new short[(layer.InChannels * paddedHeight * paddedWidth) + rowStride],
            new short[nodes.Length * rowStride]));
    }

    /// <summary>
    /// One node's row recipe: its channel, parent (−1 for a root), whether the parent enters negated, and its taps as
    /// offsets into the padded input plane, grouped by coefficient (+1, −1, +2, −2) so the row loop has no branch.
    /// </summary>
    private sealed record NodeStep(int Channel, int Parent, bool Negate, Tap[] Taps)
    {
        public int[] Plus { get; init; } = [];

        public int[] Minus { get; init; } = [];

        public int[] PlusTwo { get; init; } = [];

        public int[] MinusTwo { get; init; } = [];
    }

    /// <summary>Add <see cref="Coefficient"/>·x at kernel offset (Ky, Kx).</summary>
    private readonly record struct Tap(int Ky, int Kx, short Coefficient);

    private sealed record Buffers(short[] Input, short[] Rows);

    private static Tap[] Taps(int code, IEnumerable<int> taps, int scale, int kw) =>
        taps.Select(t => new Tap(t / kw, t % kw, (short)(((code >> t) & 1) != 0 ? -scale : scale))).ToArray();

    /// <summary>Tap ops one image costs: each node's taps at every output position (what the cost model counts).</summary>
    public long TapOpsPerImage => nodes.Sum(node => (long)node.Taps.Length) * outShape.Height * outShape.Width;

    /// <summary>Raw accumulators in (K, Ho, Wo) order from ±1 activations (or the input layer's pixel levels) in (C, H, W) order.</summary>
    public void Run(ReadOnlySpan<int> x, Span<int> acc)
    {
        var b = buffers.Value!;
        LoadPadded(x, b.Input);
        int wo = outShape.Width;
        var rows = b.Rows.AsSpan();
        Span<short> sum = stackalloc short[rowStride];
        for (int oy = 0; oy < outShape.Height; oy++)
        {
            for (int i = 0; i < nodes.Length; i++)
            {
                ComputeRow(nodes[i], i, oy, b.Input, rows);
            }
            for (int k = 0; k < added.Length; k++)
            {
                SumRow(rows, added[k], subtracted[k], sum);
                var dst = acc.Slice((((k * outShape.Height) + oy) * wo), wo);
                for (int ox = 0; ox < wo; ox++)
                {
                    dst[ox] = sum[ox];
                }
            }
        }
    }

    private void LoadPadded(ReadOnlySpan<int> x, short[] input)
    {
        int p = layer.Padding;
        if (p > 0)
        {
            input.AsSpan().Fill((short)layer.PadValue);
        }
        for (int c = 0; c < layer.InChannels; c++)
        {
            for (int y = 0; y < inShape.Height; y++)
            {
                var src = x.Slice(((c * inShape.Height) + y) * inShape.Width, inShape.Width);
                var dst = input.AsSpan((((c * paddedHeight) + y + p) * paddedWidth) + p, inShape.Width);
                for (int i = 0; i < src.Length; i++)
                {
                    dst[i] = (short)src[i];
                }
            }
        }
    }

    private void ComputeRow(NodeStep node, int index, int oy, short[] input, Span<short> rows)
    {
        ref short row = ref rows[index * rowStride];
        ref short parentRow = ref rows[Math.Max(node.Parent, 0) * rowStride];
        ref short origin = ref input[(node.Channel * paddedHeight * paddedWidth) + (oy * paddedWidth)];
        for (int j = 0; j < outShape.Width; j += Lanes)
        {
            var v = Vector<short>.Zero;
            if (node.Parent >= 0)
            {
                var parent = Vector.LoadUnsafe(ref parentRow, (nuint)j);
                v = node.Negate ? -parent : parent;
            }
            foreach (int offset in node.Plus)
            {
                v += Vector.LoadUnsafe(ref origin, (nuint)(offset + j));
            }
            foreach (int offset in node.Minus)
            {
                v -= Vector.LoadUnsafe(ref origin, (nuint)(offset + j));
            }
            foreach (int offset in node.PlusTwo)
            {
                var x = Vector.LoadUnsafe(ref origin, (nuint)(offset + j));
                v += x + x;
            }
            foreach (int offset in node.MinusTwo)
            {
                var x = Vector.LoadUnsafe(ref origin, (nuint)(offset + j));
                v -= x + x;
            }
            Vector.StoreUnsafe(v, ref row, (nuint)j);
        }
    }

    private void SumRow(ReadOnlySpan<short> rows, int[] plus, int[] minus, Span<short> sum)
    {
        ref short first = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(rows);
        for (int j = 0; j < outShape.Width; j += Lanes)
        {
            var s = Vector<short>.Zero;
            foreach (int node in plus)
            {
                s += Vector.LoadUnsafe(ref first, (nuint)((node * rowStride) + j));
            }
            foreach (int node in minus)
            {
                s -= Vector.LoadUnsafe(ref first, (nuint)((node * rowStride) + j));
            }
            s.CopyTo(sum.Slice(j, Lanes));
        }
    }
}
