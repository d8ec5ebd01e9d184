using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Bnn.Data;
using Bnn.Engine.Kernels;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Engine;

/// <summary>
/// A stride-1 conv run through a <see cref="LayerPlan"/> over pixel planes, as a step of the packed pipeline. The plan
/// turns the layer into, per input channel, a few distinct 2-D results (a small integer per pixel) and, per output
/// channel, a ±1-signed sum of C of them. Both run over pixels in vector lanes: 8-bit lanes for ±1 inputs
/// (|2-D result| ≤ n, 64 pixels per 512-bit vector), 16-bit lanes for the input layer's pixel levels.
/// <para><b>Layout.</b> Each input channel is a plane of the padded image stored flat, row after row (width
/// Wp = W + 2·pad). With stride 1, output (oy, ox) is flat position q = oy·Wp + ox and tap (ky, kx) reads plane
/// position q + ky·Wp + kx: every tap is a constant offset, so a vector of consecutive q needs no gather. The kw − 1
/// positions per row with ox ≥ Wo are computed and discarded.</para>
/// <para><b>Order.</b> Per tile of consecutive positions and per block of input channels (sized so the block's 2-D
/// results stay in cache and their signed sum cannot overflow the lane), the block's nodes are computed (roots from
/// their n taps, derived nodes from their parent with d corrections; nodes read with sign −1 are also stored negated),
/// then every output channel adds its block's C_b rows in a register and widens the sum into a 16-bit accumulator.
/// A layer whose channels all fit one block (the input layer) is one block, so no sum goes through memory twice.</para>
/// <para><b>Nodes with few branches.</b> Every node is a row plus a list of plane values: a root is the zero row plus
/// ±x at its n taps, a derived node its parent's row (or that row negated) plus ±2x at its d corrections. The planes
/// are kept in four signed copies (x, −x, 2x, −2x), so a node is only loads, adds and stores. Nodes run by depth in
/// their derivation forest, and within a depth those whose negation is stored apart from the others, then by their
/// number of corrections, so the branches that remain (negated store or not, one correction or more) run in long
/// predictable stretches. The earlier program chose add or subtract, negation and the negated store per node; on the
/// CNV's input layer its mispredicted branches cost more than the arithmetic.</para>
/// <para><b>Packing.</b> Input bits are unpacked, and thresholded outputs packed, 64 pixels x 64 channels at a time
/// through a bit-matrix transpose (<see cref="PlaneBits"/>). Bit-identical to the dense engines.</para>
/// <para><b>Speed.</b> Every (output, input) pair still costs one row addition per tile, whatever the plan, and every
/// node one or two row stores. On both hosts measured (Zen 4 and Zen 5) that keeps this kernel slower than the dense
/// kernels on every CNV layer, the input layer included, so <see cref="SharedEngine"/> times both per layer and keeps
/// the faster (bench/RESULTS.md).</para>
/// </summary>
internal static class PlaneConvStep
{
    /// <summary>Whether the plane conv can run <paramref name="layer"/>: stride 1 and every sum inside its lanes.</summary>
    public static bool Supports(ConvLayer layer)
    {
        ArgumentNullException.ThrowIfNull(layer);
        long perNode = layer.MaxInputMagnitude * layer.KernelH * layer.KernelW;
        long lane = layer.IsInputLayer ? short.MaxValue : sbyte.MaxValue;
        return layer.Stride == 1 && perNode <= lane && perNode * layer.InChannels < short.MaxValue;
    }

    /// <summary>The step for <paramref name="layer"/> under <paramref name="plan"/>; the layer must be supported.</summary>
    public static PackedStep Create(ConvLayer layer, LayerPlan plan, Shape inShape, Shape outShape) => layer.IsInputLayer
        ? new PlaneConvStep<short>(layer, plan, inShape, outShape)
        : new PlaneConvStep<sbyte>(layer, plan, inShape, outShape);
}

/// <summary>The plane conv in lanes of <typeparamref name="T"/> (see <see cref="PlaneConvStep"/>).</summary>
internal sealed class PlaneConvStep<T> : PackedStep
    where T : unmanaged, IBinaryInteger<T>, IMinMaxValue<T>
{
    // Node rows of one channel block. Longer rows spread each node's fixed cost over more positions, more channels
    // per block spread the widening into the 16-bit accumulators; both want space. On the CNV 128 KB (in L2) beat
    // 16, 32 and 64 KB on every layer: conv1 232 → 195 µs against 32 KB (256 KB: 162 µs on conv1 but slower on conv4).
    private const int RowBudgetBytes = 128 * 1024;
    private const ulong BordersFilled = 0x5A5A_0F0F_C3C3_9696UL;
    private static readonly int Lanes = Vector512<T>.Count;

    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly int paddedWidth;
    private readonly int flatOutputs;     // Ho·Wp
    private readonly int accStride;       // flat outputs rounded up to whole tiles and to 64
    private readonly int planeStride;     // per input channel, in lanes of T
    private readonly int signedSetStride; // one signed copy (x, −x, 2x or −2x) of every channel's plane
    private readonly int slots;
    private readonly int tileVectors;      // vectors of consecutive positions each node row covers
    private readonly ChannelBlock[] blocks;
    private readonly short[] bounds;
    private readonly ulong[] setWhenAtLeast; // per output channel: all ones if bit 1 (−1) means acc ≥ bound, else 0
    private readonly int planeBytes;
    private readonly int slotBytes;

    public PlaneConvStep(ConvLayer layer, LayerPlan plan, Shape inShape, Shape outShape)
    {
        if (!PlaneConvStep.Supports(layer))
        {
            throw new ArgumentException("the plane conv does not support this layer", nameof(layer));
        }
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        paddedWidth = inShape.Width + (2 * layer.Padding);
        int paddedHeight = inShape.Height + (2 * layer.Padding);
        flatOutputs = outShape.Height * paddedWidth;
        accStride = RoundUp(RoundUp(flatOutputs, Lanes), 64);
        int reach = ((layer.KernelH - 1) * paddedWidth) + layer.KernelW - 1;
        planeStride = RoundUp(Math.Max(accStride + reach, Math.Max(paddedHeight * paddedWidth, RoundUp(inShape.Height * inShape.Width, 64))), Lanes);
        signedSetStride = layer.InChannels * planeStride;
        blocks = BuildBlocks(layer, plan, paddedWidth, planeStride, signedSetStride, RoundUp(flatOutputs, Lanes) / Lanes, out slots, out tileVectors);
        bounds = layer.Threshold.Bound.Select(b => (short)Math.Clamp(b, short.MinValue, short.MaxValue)).ToArray();
        setWhenAtLeast = layer.Threshold.Flip.Select(f => f ? ulong.MaxValue : 0UL).ToArray();
        OutputWords = outShape.Height * outShape.Width * BitConvention.Words(outShape.Channels);
        planeBytes = SignedSets * signedSetStride * Unsafe.SizeOf<T>();
        slotBytes = Math.Max(slots, 1) * tileVectors * Lanes * Unsafe.SizeOf<T>();
        int accBytes = layer.OutChannels * accStride * sizeof(short);
        PaddedWords = ((planeBytes + slotBytes + accBytes + sizeof(ulong) - 1) / sizeof(ulong)) + 1; // + the borders marker
    }

    public override bool TakesPixels => layer.IsInputLayer;

    /// <summary>
    /// Consecutive input channels whose nodes are computed together. <c>Program</c> holds each node as
    /// [slot, negated slot or −1, base row, m, plane offsets…] (m of them): the node's row is the base row plus the m
    /// plane values, stored at the slot and, negated, at the negated slot. Slots are in elements of the rows scratch, plane
    /// offsets in elements from the tile's first position in the signed copy x, and <c>Offsets</c>[k·Channels + j] is
    /// the row output k adds for the block's j-th channel.
    /// </summary>
    private sealed record ChannelBlock(int Channels, int NodeCount, int[] Program, int[] Offsets);

    // The zero row a root starts from; every block keeps it before its nodes' rows.
    private const int ZeroSlot = 0;
    private const int ReservedSlots = 1;

    // The planes' signed copies, in this order in the planes scratch: roots add ±x, corrections ±2x.
    private const int SignedSets = 4;
    private const int Plus1 = 0, Minus1 = 1, Plus2 = 2, Minus2 = 3;

    private static int RoundUp(int value, int multiple) => (value + multiple - 1) / multiple * multiple;

    private static ChannelBlock[] BuildBlocks(ConvLayer layer, LayerPlan plan, int paddedWidth, int planeStride, int signedSetStride,
        int vectors, out int maxSlots, out int tileVectors)
    {
        int kw = layer.KernelW, c = layer.InChannels, k = layer.OutChannels;
        long perNode = layer.MaxInputMagnitude * plan.Taps;
        int maxChannels = (int)Math.Max(1, long.CreateTruncating(T.MaxValue) / perNode);
        var nodesOf = new List<int>[c];
        for (int i = 0; i < plan.Nodes.Count; i++)
        {
            (nodesOf[plan.Nodes[i].Channel] ??= []).Add(i);
        }
        // A node's negation is kept where a filter reads it with sign −1 or a child derives from it negated.
        var negated = new bool[plan.Nodes.Count];
        for (int f = 0; f < plan.Assignment.Length; f++)
        {
            negated[plan.Assignment[f]] |= plan.Signs[f] < 0;
        }
        for (int i = 0; i < plan.Nodes.Count; i++)
        {
            if (!plan.Nodes[i].IsRoot && plan.Derivation(i).Negated)
            {
                negated[plan.Nodes[i].Parent] = true;
            }
        }
        // Parents precede children on a channel (LayerPlan.Validate), so one pass finds every node's depth.
        var depth = new int[plan.Nodes.Count];
        for (int i = 0; i < plan.Nodes.Count; i++)
        {
            depth[i] = plan.Nodes[i].IsRoot ? 0 : depth[plan.Nodes[i].Parent] + 1;
        }
        int RowsOf(int channel) => (nodesOf[channel] ?? []).Sum(i => negated[i] ? 2 : 1);
        int rowBytes = Lanes * Unsafe.SizeOf<T>();
        int allRows = ReservedSlots + Enumerable.Range(0, c).Sum(RowsOf);
        int busiest = ReservedSlots + Enumerable.Range(0, c).Max(RowsOf);
        // One block when every channel fits it: each output's sum then stays in a register to the end. Otherwise rows
        // as long as the budget allows for the busiest channel, so that a node's fixed cost is spread over more positions.
        bool oneBlock = c <= maxChannels && allRows * rowBytes <= RowBudgetBytes;
        tileVectors = Math.Clamp(RowBudgetBytes / ((oneBlock ? allRows : busiest) * rowBytes), 1, vectors);
        int rowLength = tileVectors * Lanes;
        int slotBudget = oneBlock ? allRows : Math.Max(busiest, RowBudgetBytes / (tileVectors * rowBytes));
        var blocks = new List<ChannelBlock>();
        maxSlots = 0;
        for (int first = 0; first < c;)
        {
            int count = 1, rows = ReservedSlots + RowsOf(first);
            while (first + count < c && count < maxChannels && rows + RowsOf(first + count) <= slotBudget)
            {
                rows += RowsOf(first + count++);
            }
            var slot = new int[plan.Nodes.Count];
            var negatedSlot = new int[plan.Nodes.Count];
            var program = new List<int>();
            int next = ReservedSlots, nodeCount = 0;
            var order = Enumerable.Range(first, count).SelectMany(ch => nodesOf[ch] ?? [])
                .OrderBy(i => depth[i]).ThenBy(i => negated[i]).ThenBy(plan.NodeCost);
            foreach (int i in order)
            {
                slot[i] = next++;
                negatedSlot[i] = negated[i] ? next++ : -1;
                AppendNode(program, plan, i, slot, negatedSlot, rowLength, kw, paddedWidth, planeStride, signedSetStride);
                nodeCount++;
            }
            var offsets = new int[k * count];
            for (int o = 0; o < k; o++)
            {
                for (int j = 0; j < count; j++)
                {
                    int f = (o * c) + first + j;
                    int node = plan.Assignment[f];
                    offsets[(o * count) + j] = (plan.Signs[f] > 0 ? slot[node] : negatedSlot[node]) * rowLength;
                }
            }
            blocks.Add(new ChannelBlock(count, nodeCount, [.. program], offsets));
            maxSlots = Math.Max(maxSlots, next);
            first += count;
        }
        return [.. blocks];
    }

    private static void AppendNode(List<int> program, LayerPlan plan, int i, int[] slot, int[] negatedSlot, int rowLength, int kw,
        int paddedWidth, int planeStride, int signedSetStride)
    {
        var node = plan.Nodes[i];
        // Roots add code_t·x over all n taps to the zero row. A derived node starts from its parent's row, negated when
        // the derivation says so, and corrects the taps where they differ by −2·code_t·x (same orientation) or
        // +2·code_t·x (negated), code being the parent's (LayerPlan.Derivation).
        bool negate = false;
        int corrected = FilterCode.Mask(plan.Taps), code = node.Code, baseSlot = ZeroSlot;
        if (!node.IsRoot)
        {
            (negate, corrected) = plan.Derivation(i);
            code = plan.Nodes[node.Parent].Code;
            baseSlot = negate ? negatedSlot[node.Parent] : slot[node.Parent];
        }
        var taps = new List<int>();
        for (int t = 0; t < plan.Taps; t++)
        {
            if (((corrected >> t) & 1) != 0)
            {
                bool positive = (((code >> t) & 1) == 0) == (node.IsRoot || negate);
                int set = node.IsRoot ? (positive ? Plus1 : Minus1) : (positive ? Plus2 : Minus2);
                taps.Add((set * signedSetStride) + (node.Channel * planeStride) + ((t / kw) * paddedWidth) + (t % kw));
            }
        }
        program.AddRange([slot[i] * rowLength, negatedSlot[i] < 0 ? -1 : negatedSlot[i] * rowLength, baseSlot * rowLength, taps.Count]);
        program.AddRange(taps);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override ReadOnlySpan<ulong> RunPixels(ReadOnlySpan<byte> pixels, ulong[] output, ulong[] padded, int[] acc)
    {
        var planes = Planes(padded);
        int p = layer.Padding, h = inShape.Height, w = inShape.Width;
        for (int c = 0; c < inShape.Channels; c++)
        {
            for (int y = 0; y < h; y++)
            {
                PixelCode.EncodeChannel(layer, c, pixels.Slice(((c * h) + y) * w, w), planes.Slice((c * planeStride) + ((y + p) * paddedWidth) + p, w));
            }
        }
        SignedCopies(padded);
        Convolve(padded);
        Pack(padded, output);
        return output;
    }

    public override ReadOnlySpan<ulong> Run(ReadOnlySpan<ulong> input, ulong[] output, ulong[] padded, int[] acc)
    {
        Unpack(input, padded);
        SignedCopies(padded);
        Convolve(padded);
        Pack(padded, output);
        return output;
    }

    /// <summary>The planes, with their padded borders filled the first time this scratch is used (later images only overwrite the interior).</summary>
    private Span<T> Planes(ulong[] scratch)
    {
        var planes = MemoryMarshal.Cast<ulong, T>(scratch.AsSpan())[..(layer.InChannels * planeStride)];
        if (layer.Padding > 0 && scratch[^1] != BordersFilled)
        {
            int size = (inShape.Height + (2 * layer.Padding)) * paddedWidth;
            for (int c = 0; c < layer.InChannels; c++)
            {
                planes.Slice(c * planeStride, size).Fill(T.CreateTruncating(layer.PadValue));
            }
            scratch[^1] = BordersFilled;
        }
        return planes;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Unpack(ReadOnlySpan<ulong> input, ulong[] scratch)
    {
        var planes = Planes(scratch);
        int pixels = inShape.Height * inShape.Width, words = BitConvention.Words(inShape.Channels);
        int p = layer.Padding, w = inShape.Width;
        Span<ulong> masks = stackalloc ulong[64];
        Span<T> values = stackalloc T[64];
        ref T plane0 = ref MemoryMarshal.GetReference(planes);
        for (int word = 0; word < words; word++)
        {
            int channels = Math.Min(64, inShape.Channels - (word * 64));
            for (int first = 0; first < pixels; first += 64)
            {
                int count = Math.Min(64, pixels - first);
                PlaneBits.PixelsToChannels(input, first, count, words, word, masks);
                for (int j = 0; j < channels; j++)
                {
                    int c = (word * 64) + j;
                    if (p == 0)
                    {
                        // Unpadded planes are the packed pixel order: 64 values in place (the tail spills into slack).
                        Expand(masks[j], ref Unsafe.Add(ref plane0, (c * planeStride) + first));
                        continue;
                    }
                    Expand(masks[j], ref values[0]);
                    for (int i = 0, y = first / w, x = first % w; i < count; y++, x = 0)
                    {
                        int run = Math.Min(w - x, count - i);
                        values.Slice(i, run).CopyTo(planes.Slice((c * planeStride) + ((y + p) * paddedWidth) + x + p, run));
                        i += run;
                    }
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Expand(ulong mask, ref T values)
    {
        if (typeof(T) == typeof(sbyte))
        {
            PlaneBits.Expand(mask, ref Unsafe.As<T, sbyte>(ref values));
        }
        else
        {
            PlaneBits.Expand(mask, ref Unsafe.As<T, short>(ref values));
        }
    }

    /// <summary>Writes −x, 2x and −2x beside the planes x, borders included.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SignedCopies(ulong[] scratch)
    {
        ref T x = ref Unsafe.As<byte, T>(ref MemoryMarshal.AsBytes(scratch.AsSpan())[0]);
        int n = signedSetStride, lanes = Lanes;
        for (int i = 0; i < n; i += lanes)
        {
            var value = Vector512.LoadUnsafe(ref x, (nuint)i);
            var twice = value + value;
            (-value).StoreUnsafe(ref x, (nuint)((Minus1 * n) + i));
            twice.StoreUnsafe(ref x, (nuint)((Plus2 * n) + i));
            (-twice).StoreUnsafe(ref x, (nuint)((Minus2 * n) + i));
        }
    }

    /// <summary>Fills the 16-bit accumulators (K rows of flat positions) from the planes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Convolve(ulong[] scratch)
    {
        var bytes = MemoryMarshal.AsBytes(scratch.AsSpan());
        ref T planes = ref Unsafe.As<byte, T>(ref bytes[0]);
        ref T rows = ref Unsafe.As<byte, T>(ref bytes[planeBytes]);
        ref short acc = ref Unsafe.As<byte, short>(ref bytes[planeBytes + slotBytes]);
        int k = layer.OutChannels, lanes = Lanes, vectors = RoundUp(flatOutputs, lanes) / lanes;
        for (int tile = 0; tile < vectors; tile += tileVectors)
        {
            int count = Math.Min(tileVectors, vectors - tile);
            int q = tile * lanes;
            MemoryMarshal.CreateSpan(ref rows, count * lanes).Clear(); // the zero row (slot 0)
            for (int b = 0; b < blocks.Length; b++)
            {
                var block = blocks[b];
                ref int step = ref MemoryMarshal.GetArrayDataReference(block.Program);
                for (int i = 0; i < block.NodeCount; i++)
                {
                    step = ref ComputeNode(ref step, ref Unsafe.Add(ref planes, q), ref rows, count);
                }
                int channels = block.Channels;
                ref int offsets = ref MemoryMarshal.GetArrayDataReference(block.Offsets);
                for (int o = 0; o < k; o++)
                {
                    ref int own = ref Unsafe.Add(ref offsets, o * channels);
                    ref short accRow = ref Unsafe.Add(ref acc, (o * accStride) + q);
                    for (int v = 0; v < count; v++)
                    {
                        ref T column = ref Unsafe.Add(ref rows, v * lanes);
                        var sum = Vector512.LoadUnsafe(ref column, (nuint)own);
                        for (int j = 1; j < channels; j++)
                        {
                            sum += Vector512.LoadUnsafe(ref column, (nuint)Unsafe.Add(ref own, j));
                        }
                        Accumulate(sum, ref Unsafe.Add(ref accRow, v * lanes), b == 0);
                    }
                }
            }
        }
    }

    /// <summary>Computes one node's row over <paramref name="count"/> vectors; returns the next node's program entry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref int ComputeNode(ref int step, ref T tileOrigin, ref T rows, int count)
    {
        int slot = step, negatedSlot = Unsafe.Add(ref step, 1), baseRow = Unsafe.Add(ref step, 2), m = Unsafe.Add(ref step, 3);
        ref int taps = ref Unsafe.Add(ref step, 4);
        int lanes = Lanes;
        if (m == 1 && negatedSlot < 0)
        {
            // Nine nodes in ten on the CNV: one correction.
            nuint tap = (nuint)taps;
            for (int v = 0, at = 0; v < count; v++, at += lanes)
            {
                var value = Vector512.LoadUnsafe(ref rows, (nuint)(baseRow + at)) + Vector512.LoadUnsafe(ref Unsafe.Add(ref tileOrigin, at), tap);
                value.StoreUnsafe(ref rows, (nuint)(slot + at));
            }
        }
        else if (m == 1)
        {
            nuint tap = (nuint)taps;
            for (int v = 0, at = 0; v < count; v++, at += lanes)
            {
                var value = Vector512.LoadUnsafe(ref rows, (nuint)(baseRow + at)) + Vector512.LoadUnsafe(ref Unsafe.Add(ref tileOrigin, at), tap);
                value.StoreUnsafe(ref rows, (nuint)(slot + at));
                (-value).StoreUnsafe(ref rows, (nuint)(negatedSlot + at));
            }
        }
        else
        {
            for (int v = 0, at = 0; v < count; v++, at += lanes)
            {
                var value = Vector512.LoadUnsafe(ref rows, (nuint)(baseRow + at));
                ref T x = ref Unsafe.Add(ref tileOrigin, at);
                for (int t = 0; t < m; t++)
                {
                    value += Vector512.LoadUnsafe(ref x, (nuint)Unsafe.Add(ref taps, t));
                }
                value.StoreUnsafe(ref rows, (nuint)(slot + at));
                if (negatedSlot >= 0)
                {
                    (-value).StoreUnsafe(ref rows, (nuint)(negatedSlot + at));
                }
            }
        }
        return ref Unsafe.Add(ref taps, m);
    }

    /// <summary>Adds (or, for the first block, stores) a block's sum into the 16-bit accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Accumulate(Vector512<T> sum, ref short acc, bool first)
    {
        if (typeof(T) == typeof(sbyte))
        {
            var (lower, upper) = Vector512.Widen(sum.As<T, sbyte>());
            if (!first)
            {
                lower += Vector512.LoadUnsafe(ref acc);
                upper += Vector512.LoadUnsafe(ref acc, 32);
            }
            lower.StoreUnsafe(ref acc);
            upper.StoreUnsafe(ref acc, 32);
            return;
        }
        var value = sum.As<T, short>();
        if (!first)
        {
            value += Vector512.LoadUnsafe(ref acc);
        }
        value.StoreUnsafe(ref acc);
    }

    /// <summary>Thresholds the accumulators and packs them, 64 positions x 64 channels per transpose, into pixel words.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Pack(ulong[] scratch, ulong[] output)
    {
        var bytes = MemoryMarshal.AsBytes(scratch.AsSpan());
        ref short acc = ref Unsafe.As<byte, short>(ref bytes[planeBytes + slotBytes]);
        int k = layer.OutChannels, words = BitConvention.Words(k), wo = outShape.Width;
        Span<ulong> masks = stackalloc ulong[64];
        for (int first = 0; first < flatOutputs; first += 64)
        {
            for (int word = 0; word < words; word++)
            {
                for (int j = 0; j < 64; j++)
                {
                    int o = (word * 64) + j;
                    if (o >= k)
                    {
                        masks[j] = 0;
                        continue;
                    }
                    var bound = Vector512.Create(bounds[o]);
                    ref short row = ref Unsafe.Add(ref acc, (o * accStride) + first);
                    ulong atLeast = Vector512.GreaterThanOrEqual(Vector512.LoadUnsafe(ref row), bound).ExtractMostSignificantBits()
                        | (Vector512.GreaterThanOrEqual(Vector512.LoadUnsafe(ref row, 32), bound).ExtractMostSignificantBits() << 32);
                    // Bit 1 (−1) exactly when the threshold says negative: (acc ≥ bound) == flip.
                    masks[j] = ~(atLeast ^ setWhenAtLeast[o]);
                }
                PlaneBits.ChannelsToPositions(masks, first, Math.Min(64, flatOutputs - first), paddedWidth, wo, words, word, output);
            }
        }
    }
}

