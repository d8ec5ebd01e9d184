using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// The first layer on 8-bit pixels with VNNI (<c>vpdpbusd</c>: four u8 x s8 products summed into each int32 lane; without
/// AVX-VNNI, its exact AVX2 equivalent, <see cref="DotAdd"/>). Under
/// the standard pixel code the level is 2p − 255, so Σ w·(2p − 255) = 2·Σ w·p − 255·Σ w: the raw pixels p go straight
/// into the instruction, the weights ±1 are s8, and the constant 255·Σ w per filter is folded into the bounds, exactly.
/// <para>Pixels are laid out (H, W, C) so that one kernel row's kw·C bytes are contiguous; they are read as dwords
/// (groups of 4 bytes, broadcast to every lane) and the bytes of a group past the row's taps get weight 0. Each lane
/// holds one filter: 8 filters per 256-bit register, four such blocks for each of two positions in registers over
/// the taps. Where AVX-512BW is present and the sums fit 16 bits, each four blocks instead run as two 512-bit
/// registers of 16-bit pair sums (<see cref="Wide32"/>; the CNV's input layer: 15.3 → 13.5 µs).</para>
/// <para>Zero padding (a level of 0, which no pixel value encodes) is stored as pixel 0, whose level is −255: each
/// padded tap then adds −255·w instead of 0, so border positions get 255·Σ_{padded taps} w added back, exactly.</para>
/// <para>Each block of 8 sums is thresholded as soon as it leaves the instruction, against bounds that already hold
/// the constant and the border correction (<see cref="DotBounds"/>): the layer never stores its accumulators (CNV's
/// would be 230 KB, and reading them back cost a quarter of the step).</para>
/// </summary>
internal sealed class VnniInputConvStep : PackedStep
{
    private const int FiltersPerVector = 8;

    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly int groups;        // dwords per kernel row
    private readonly sbyte[] weights;   // (ky, group, filter block, 8 filters x 4 bytes)
    private readonly int rowBytes;      // Wp·C, one padded image row in (H, W, C)
    private readonly int paddedWidth;
    private readonly int[] boundRow;           // per output position, its row in dotBounds
    private readonly int[] dotBounds;          // rows of K bounds on Σ w·p: one row per border position, then the interior's
    private readonly bool sixteenBit;

    /// <summary>
    /// Whether this step runs <paramref name="layer"/>: AVX2 present (AVX-VNNI's <c>vpdpbusd</c> where the CPU has it, else
    /// its exact three-instruction equivalent, <see cref="DotAdd"/>), the standard pixel code (raw pixels are what the
    /// instruction multiplies), K a multiple of 8.
    /// </summary>
    public static bool Supports(ConvLayer layer) =>
        Avx2.IsSupported && layer.IsInputLayer && layer.PixelLevels is null && layer.OutChannels % FiltersPerVector == 0;

    /// <summary>
    /// Whether groups of 32 filters run on 512-bit 16-bit lanes (<see cref="Wide32"/>): AVX-512BW present and no sum of
    /// a filter's products, each |w·p| ≤ 255, can leave a 16-bit lane.
    /// </summary>
    internal static bool Supports16(ConvLayer layer) =>
        Avx512BW.IsSupported && Vector512.IsHardwareAccelerated
        && (long)PixelCode.MaxAbs * layer.KernelH * layer.KernelW * layer.InChannels <= short.MaxValue;

    public VnniInputConvStep(ConvLayer layer, Shape inShape, Shape outShape)
    {
        if (!Supports(layer))
        {
            throw new ArgumentException("the VNNI input conv does not support this layer", nameof(layer));
        }
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        sixteenBit = Supports16(layer);
        int c = layer.InChannels, k = layer.OutChannels, blocks = k / FiltersPerVector;
        groups = ((layer.KernelW * c) + 3) / 4;
        paddedWidth = inShape.Width + (2 * layer.Padding);
        rowBytes = paddedWidth * c;
        weights = new sbyte[layer.KernelH * groups * k * 4];
        var offsets = new int[k];
        for (int o = 0; o < k; o++)
        {
            for (int ky = 0; ky < layer.KernelH; ky++)
            {
                for (int kx = 0; kx < layer.KernelW; kx++)
                {
                    for (int ch = 0; ch < c; ch++)
                    {
                        int b = (kx * c) + ch;   // byte within the kernel row
                        int g = b / 4, block = o / FiltersPerVector, lane = o % FiltersPerVector;
                        sbyte w = layer.Weight(o, ch, ky, kx);
                        weights[(((((ky * groups) + g) * blocks) + block) * FiltersPerVector * 4) + (lane * 4) + (b % 4)] = w;
                        offsets[o] += PixelCode.MaxAbs * w;
                    }
                }
            }
        }
        OutputWords = outShape.Height * outShape.Width * BitConvention.Words(k);
        // The padded (H, W, C) pixels plus slack: the last group of the last row may read up to 3 bytes past the image.
        // The border stays 0 (pixel 0) because only the interior is ever written.
        int paddedBytes = (inShape.Height + (2 * layer.Padding)) * rowBytes;
        PaddedWords = (paddedBytes + 4 + sizeof(ulong) - 1) / sizeof(ulong);
        var excess = BinaryConvStep.ZeroPadCorrection(layer, inShape, outShape);
        var border = Enumerable.Range(0, outShape.Height * outShape.Width)
            .Where(p => excess.AsSpan(p * k, k).ContainsAnyExcept(0)).ToArray();
        var corrections = border.Select(p => excess.AsSpan(p * k, k).ToArray()).Append(new int[k]);
        dotBounds = [.. corrections.SelectMany(row => DotBounds(layer.Threshold.Bound, offsets, row))];
        boundRow = Enumerable.Repeat(border.Length, outShape.Height * outShape.Width).ToArray();
        for (int i = 0; i < border.Length; i++)
        {
            boundRow[border[i]] = i;
        }
    }

    /// <summary>
    /// The threshold moved onto the raw dot product d = Σ w·p. The level sum is 2d − 255·Σ w + 255·(padded excess), and
    /// sum ≥ bound ⇔ 2d ≥ bound + 255·Σ w − 255·excess =: x ⇔ d ≥ ⌈x / 2⌉, d being an integer. So each block needs one
    /// compare, not a shift, a subtract and an add before it. A constant channel's bound (int.MinValue) stays one.
    /// </summary>
    private static IEnumerable<int> DotBounds(int[] bounds, int[] offsets, int[] excess) => bounds.Select((bound, k) =>
    {
        if (bound == int.MinValue)
        {
            return int.MinValue;
        }
        long x = (long)bound + offsets[k] - ((long)PixelCode.MaxAbs * excess[k]);
        return (int)Math.Clamp((x + 1) >> 1, int.MinValue, int.MaxValue);
    });

    public override bool TakesPixels => true;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override ReadOnlySpan<ulong> RunPixels(ReadOnlySpan<byte> pixels, ulong[] output, ulong[] padded, int[] acc)
    {
        var hwc = MemoryMarshal.AsBytes(padded.AsSpan());
        ToHwc(pixels, hwc);
        ThresholdPositions(hwc, output, 0, outShape.Height);
        return output;
    }

    public override bool Splits => outShape.Height >= 2;

    public override ulong[] PrepareParts(ReadOnlySpan<byte> pixels, ulong[] input, ulong[] padded)
    {
        ToHwc(pixels, MemoryMarshal.AsBytes(padded.AsSpan()));
        return padded;
    }

    public override void RunPart(ulong[] source, ulong[] output, int[] acc, int part, int parts)
    {
        var (from, to) = PartRange(outShape.Height, part, parts, align: 1);
        ThresholdPositions(MemoryMarshal.AsBytes(source.AsSpan()), output, from, to);
    }

    /// <summary>
    /// Interleaves the (C, H, W) planes into the padded (H, W, C) image. Three planes (RGB) go 16 pixels at a time
    /// through one vpermb where VBMI is present: byte by byte, this had cost an eighth of the step.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ToHwc(ReadOnlySpan<byte> pixels, Span<byte> hwc)
    {
        int c = inShape.Channels, h = inShape.Height, w = inShape.Width, pad = layer.Padding, plane = h * w;
        if (pixels.Length < c * plane)
        {
            throw new ArgumentException("the image is smaller than the layer's input shape", nameof(pixels));
        }
        bool rgb = c == 3 && Avx512Vbmi.IsSupported;
        // Output byte j of 48 is pixel j / 3's channel j % 3, found at byte 16·(j % 3) + j / 3 of (R, G, B, 0).
        var interleave = Vector512.Create(
            (byte)0, 16, 32, 1, 17, 33, 2, 18, 34, 3, 19, 35, 4, 20, 36, 5, 21, 37, 6, 22, 38, 7, 23, 39, 8, 24, 40, 9, 25, 41, 10, 26,
            42, 11, 27, 43, 12, 28, 44, 13, 29, 45, 14, 30, 46, 15, 31, 47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        for (int y = 0; y < h; y++)
        {
            var dst = hwc[((((y + pad) * paddedWidth) + pad) * c)..];
            int x = 0;
            if (rgb)
            {
                for (; x + 16 <= w; x += 16)
                {
                    int at = (y * w) + x;
                    var rg = Vector256.Create(Vector128.Create(pixels.Slice(at, 16)), Vector128.Create(pixels.Slice(plane + at, 16)));
                    var b = Vector256.Create(Vector128.Create(pixels.Slice((2 * plane) + at, 16)), Vector128<byte>.Zero);
                    var mixed = Avx512Vbmi.PermuteVar64x8(Vector512.Create(rg, b), interleave);
                    // 48 bytes, stored as 32 + 16 so the padding past the row is never written.
                    mixed.GetLower().CopyTo(dst.Slice(3 * x, 32));
                    mixed.GetUpper().GetLower().CopyTo(dst.Slice((3 * x) + 32, 16));
                }
            }
            for (; x < w; x++)
            {
                for (int ch = 0; ch < c; ch++)
                {
                    dst[(x * c) + ch] = pixels[(ch * plane) + (y * w) + x];
                }
            }
        }
    }

    /// <summary>The output bits of output rows [<paramref name="fromRow"/>, <paramref name="toRow"/>), two positions and four filter blocks at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ThresholdPositions(Span<byte> hwc, Span<ulong> output, int fromRow, int toRow)
    {
        int k = layer.OutChannels, blocks = k / FiltersPerVector, s = layer.Stride, c = inShape.Channels, words = BitConvention.Words(k);
        ref byte image = ref MemoryMarshal.GetReference(hwc);
        ref sbyte w0 = ref MemoryMarshal.GetArrayDataReference(weights);
        ref int bounds0 = ref MemoryMarshal.GetArrayDataReference(dotBounds);
        int perTap = blocks * FiltersPerVector * 4, wo = outShape.Width, step = s * c;
        for (int oy = fromRow; oy < toRow; oy++)
        {
            for (int ox = 0; ox < wo; ox += 2)
            {
                // Two output pixels (the second a repeat of the first at a row's odd end) and four filter blocks at a
                // time: each weight load feeds two vpdpbusd, and eight independent sums hide the instruction's latency.
                int second = Math.Min(ox + 1, wo - 1);
                int p = (oy * wo) + ox, q = (oy * wo) + second;
                ref byte patch0 = ref Unsafe.Add(ref image, (oy * s * rowBytes) + (ox * step));
                ref byte patch1 = ref Unsafe.Add(ref image, (oy * s * rowBytes) + (second * step));
                ref int boundsA = ref Unsafe.Add(ref bounds0, boundRow[p] * k);
                ref int boundsB = ref Unsafe.Add(ref bounds0, boundRow[q] * k);
                ulong geA = 0, geB = 0;
                for (int b = 0, count; b < blocks; b += count)
                {
                    // Four blocks at a time, then one: b is a multiple of 4 for every group of four, so a group never
                    // straddles a 64-filter word.
                    count = blocks - b >= 4 ? 4 : 1;
                    // The blocks' compare masks are gathered in registers and written once per 64 filters.
                    ref sbyte w = ref Unsafe.Add(ref w0, b * FiltersPerVector * 4);
                    var (maskA, maskB) = count == 4 && sixteenBit
                        ? Wide32(ref patch0, ref patch1, ref w, perTap, b, ref boundsA, ref boundsB)
                        : Narrow(ref patch0, ref patch1, ref w, perTap, b, count, ref boundsA, ref boundsB);
                    int shift = (b & 7) * FiltersPerVector;
                    geA |= maskA << shift;
                    geB |= maskB << shift;
                    if (((b + count) & 7) == 0 || b + count == blocks)
                    {
                        int word = b >> 3;
                        output[(p * words) + word] = Bits(geA, word);
                        output[(q * words) + word] = Bits(geB, word);
                        geA = geB = 0;
                    }
                }
            }
        }
    }

    /// <summary>
    /// <paramref name="count"/> blocks of 8 filters (1 or 4) from block <paramref name="b"/>, of two positions, with
    /// <c>vpdpbusd</c> on 256-bit lanes: one bit per filter.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private (ulong A, ulong B) Narrow(ref byte patch0, ref byte patch1, ref sbyte w, int perTap, int b, int count, ref int boundsA, ref int boundsB)
    {
        Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<int> b0 = default, b1 = default, b2 = default, b3 = default;
        for (int ky = 0; ky < layer.KernelH; ky++)
        {
            ref byte row0 = ref Unsafe.Add(ref patch0, ky * rowBytes);
            ref byte row1 = ref Unsafe.Add(ref patch1, ky * rowBytes);
            for (int g = 0; g < groups; g++)
            {
                var x0 = Vector256.Create(Unsafe.ReadUnaligned<int>(ref Unsafe.Add(ref row0, g * 4))).AsByte();
                var x1 = Vector256.Create(Unsafe.ReadUnaligned<int>(ref Unsafe.Add(ref row1, g * 4))).AsByte();
                ref sbyte wg = ref Unsafe.Add(ref w, ((ky * groups) + g) * perTap);
                var w0v = Vector256.LoadUnsafe(ref wg);
                a0 = DotAdd(a0, x0, w0v);
                b0 = DotAdd(b0, x1, w0v);
                if (count == 4)
                {
                    var w1v = Vector256.LoadUnsafe(ref wg, 32);
                    var w2v = Vector256.LoadUnsafe(ref wg, 64);
                    var w3v = Vector256.LoadUnsafe(ref wg, 96);
                    a1 = DotAdd(a1, x0, w1v);
                    b1 = DotAdd(b1, x1, w1v);
                    a2 = DotAdd(a2, x0, w2v);
                    b2 = DotAdd(b2, x1, w2v);
                    a3 = DotAdd(a3, x0, w3v);
                    b3 = DotAdd(b3, x1, w3v);
                }
            }
        }
        ulong maskA = Compare(a0, b, ref boundsA), maskB = Compare(b0, b, ref boundsB);
        if (count == 4)
        {
            maskA |= (Compare(a1, b + 1, ref boundsA) << 8) | (Compare(a2, b + 2, ref boundsA) << 16) | (Compare(a3, b + 3, ref boundsA) << 24);
            maskB |= (Compare(b1, b + 1, ref boundsB) << 8) | (Compare(b2, b + 2, ref boundsB) << 16) | (Compare(b3, b + 3, ref boundsB) << 24);
        }
        return (maskA, maskB);
    }

    /// <summary>
    /// 32 filters (blocks b..b+3) of two positions in 512-bit registers: <c>vpmaddubsw</c> sums each group's u8 x s8
    /// products in pairs into 16-bit lanes, which add up over all taps without overflow (|Σ| ≤ 255·kh·kw·C ≤ 32,767,
    /// see <see cref="Supports16"/>); one <c>vpmaddwd</c> by ones then gives each filter's int32 dot product. Per 32
    /// filters and tap group that is two multiplies and two adds, where <c>vpdpbusd</c> on 256-bit lanes (.NET has no
    /// 512-bit form) takes four multiply-adds.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private (ulong A, ulong B) Wide32(ref byte patch0, ref byte patch1, ref sbyte w, int perTap, int b, ref int boundsA, ref int boundsB)
    {
        Vector512<short> a0 = default, a1 = default, b0 = default, b1 = default;
        for (int ky = 0; ky < layer.KernelH; ky++)
        {
            ref byte row0 = ref Unsafe.Add(ref patch0, ky * rowBytes);
            ref byte row1 = ref Unsafe.Add(ref patch1, ky * rowBytes);
            for (int g = 0; g < groups; g++)
            {
                var x0 = Vector512.Create(Unsafe.ReadUnaligned<int>(ref Unsafe.Add(ref row0, g * 4))).AsByte();
                var x1 = Vector512.Create(Unsafe.ReadUnaligned<int>(ref Unsafe.Add(ref row1, g * 4))).AsByte();
                ref sbyte wg = ref Unsafe.Add(ref w, ((ky * groups) + g) * perTap);
                var lower = Vector512.LoadUnsafe(ref wg);
                var upper = Vector512.LoadUnsafe(ref wg, 64);
                a0 += Avx512BW.MultiplyAddAdjacent(x0, lower);
                b0 += Avx512BW.MultiplyAddAdjacent(x1, lower);
                a1 += Avx512BW.MultiplyAddAdjacent(x0, upper);
                b1 += Avx512BW.MultiplyAddAdjacent(x1, upper);
            }
        }
        ulong ge32A = Compare16(a0, b, ref boundsA) | (Compare16(a1, b + 2, ref boundsA) << 16);
        ulong ge32B = Compare16(b0, b, ref boundsB) | (Compare16(b1, b + 2, ref boundsB) << 16);
        return (ge32A, ge32B);
    }

    /// <summary>
    /// acc + four u8 x s8 products per int32 lane: <c>vpdpbusd</c> with AVX-VNNI. Zen 4 has VNNI only in its EVEX form,
    /// which .NET 10 does not expose, so elsewhere <c>vpmaddubsw</c> sums the products in pairs (|p·w| ≤ 255: a pair
    /// cannot saturate) and <c>vpmaddwd</c> by ones widens the pairs: the same int32 sums, exactly.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> DotAdd(Vector256<int> acc, Vector256<byte> pixels, Vector256<sbyte> weights) =>
        AvxVnni.IsSupported
            ? AvxVnni.MultiplyWideningAndAdd(acc, pixels, weights)
            : acc + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(pixels, weights), Vector256<short>.One);

    /// <summary>16 filters' pair sums (two 16-bit lanes each) added into dot products and compared: 16 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Compare16(Vector512<short> pairs, int block, ref int bounds)
    {
        var dot = Avx512BW.MultiplyAddAdjacent(pairs, Vector512<short>.One);
        return Vector512.GreaterThanOrEqual(dot, Vector512.LoadUnsafe(ref bounds, (nuint)(block * FiltersPerVector))).ExtractMostSignificantBits();
    }

    /// <summary>Bit set for −1: not ((sum ≥ bound) ≠ flip), and 0 past the last filter.</summary>
    private ulong Bits(ulong ge, int word)
    {
        int valid = Math.Min(64, layer.OutChannels - (word * 64));
        return ~(ge ^ layer.Threshold.FlipWords[word]) & (valid == 64 ? ulong.MaxValue : (1UL << valid) - 1);
    }

    /// <summary>A block's 8 dot products against their bounds (<see cref="DotBounds"/>): 8 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Compare(Vector256<int> dot, int block, ref int bounds) =>
        Vector256.GreaterThanOrEqual(dot, Vector256.LoadUnsafe(ref bounds, (nuint)(block * FiltersPerVector))).ExtractMostSignificantBits();
}
