using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// The first layer on 8-bit pixels with VNNI (<c>vpdpbusd</c>: four u8 x s8 products summed into each int32 lane). Under
/// the standard pixel code the level is 2p − 255, so Σ w·(2p − 255) = 2·Σ w·p − 255·Σ w: the raw pixels p go straight
/// into the instruction, the weights ±1 are s8, and the constant 255·Σ w per filter is subtracted afterwards, exactly.
/// <para>Pixels are laid out (H, W, C) so that one kernel row's kw·C bytes are contiguous; they are read as dwords
/// (groups of 4 bytes, broadcast to every lane) and the bytes of a group past the row's taps get weight 0. Each lane
/// holds one filter: 8 filters per 256-bit register, all K of them kept in registers over the taps.</para>
/// <para>Zero padding (a level of 0, which no pixel value encodes) is stored as pixel 0, whose level is −255: each
/// padded tap then adds −255·w instead of 0, so border positions get 255·Σ_{padded taps} w added back, exactly.</para>
/// </summary>
internal sealed class VnniInputConvStep : PackedStep
{
    private const int FiltersPerVector = 8;

    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly int groups;        // dwords per kernel row
    private readonly sbyte[] weights;   // (ky, group, filter block, 8 filters x 4 bytes)
    private readonly int[] offsets;     // per filter: 255·Σ w
    private readonly int rowBytes;      // Wp·C, one padded image row in (H, W, C)
    private readonly int paddedWidth;
    private readonly int[] borderPositions;    // output positions with a padded tap
    private readonly int[] borderCorrections;  // per border position, K values of 255·Σ_{padded taps} w

    /// <summary>
    /// Whether this step runs <paramref name="layer"/>: AVX-VNNI present, the standard pixel code (raw pixels are what the
    /// instruction multiplies), K a multiple of 8.
    /// </summary>
    public static bool Supports(ConvLayer layer) =>
        AvxVnni.IsSupported && layer.IsInputLayer && layer.PixelLevels is null && layer.OutChannels % FiltersPerVector == 0;

    public VnniInputConvStep(ConvLayer layer, Shape inShape, Shape outShape)
    {
        if (!Supports(layer))
        {
            throw new ArgumentException("the VNNI input conv does not support this layer", nameof(layer));
        }
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        int c = layer.InChannels, k = layer.OutChannels, blocks = k / FiltersPerVector;
        groups = ((layer.KernelW * c) + 3) / 4;
        paddedWidth = inShape.Width + (2 * layer.Padding);
        rowBytes = paddedWidth * c;
        weights = new sbyte[layer.KernelH * groups * k * 4];
        offsets = new int[k];
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
        borderPositions = border;
        borderCorrections = border.SelectMany(p => excess.Skip(p * k).Take(k).Select(e => PixelCode.MaxAbs * e)).ToArray();
    }

    public override int AccumulatorCount => outShape.Size;

    public override bool TakesPixels => true;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override ReadOnlySpan<ulong> RunPixels(ReadOnlySpan<byte> pixels, ulong[] output, ulong[] padded, int[] acc)
    {
        var hwc = MemoryMarshal.AsBytes(padded.AsSpan());
        int c = inShape.Channels, h = inShape.Height, w = inShape.Width, pad = layer.Padding, k = layer.OutChannels;
        for (int ch = 0; ch < c; ch++)
        {
            for (int y = 0; y < h; y++)
            {
                var src = pixels.Slice(((ch * h) + y) * w, w);
                var dst = hwc[((((y + pad) * paddedWidth) + pad) * c)..];
                for (int x = 0; x < w; x++)
                {
                    dst[(x * c) + ch] = src[x];
                }
            }
        }
        Accumulate(hwc, acc);
        for (int i = 0; i < borderPositions.Length; i++)
        {
            var dst = acc.AsSpan(borderPositions[i] * k, k);
            var add = borderCorrections.AsSpan(i * k, k);
            for (int j = 0; j < k; j++)
            {
                dst[j] += add[j];
            }
        }
        BinarizePositions(acc, layer.Threshold, outShape.Height * outShape.Width, layer.OutChannels, output);
        return output;
    }

    /// <summary>Raw accumulators, position-major: acc[(oy·Wo + ox)·K + k].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Accumulate(Span<byte> hwc, Span<int> acc)
    {
        int k = layer.OutChannels, blocks = k / FiltersPerVector, s = layer.Stride, c = inShape.Channels;
        ref byte image = ref MemoryMarshal.GetReference(hwc);
        ref sbyte w0 = ref MemoryMarshal.GetArrayDataReference(weights);
        ref int offset0 = ref MemoryMarshal.GetArrayDataReference(offsets);
        ref int acc0 = ref MemoryMarshal.GetReference(acc);
        int perTap = blocks * FiltersPerVector * 4, wo = outShape.Width, step = s * c;
        for (int oy = 0; oy < outShape.Height; oy++)
        {
            for (int ox = 0; ox < wo; ox += 2)
            {
                // Two output pixels (the second a repeat of the first at a row's odd end) and four filter blocks at a
                // time: each weight load feeds two vpdpbusd, and eight independent sums hide the instruction's latency.
                int second = Math.Min(ox + 1, wo - 1);
                ref byte patch0 = ref Unsafe.Add(ref image, (oy * s * rowBytes) + (ox * step));
                ref byte patch1 = ref Unsafe.Add(ref image, (oy * s * rowBytes) + (second * step));
                ref int dst0 = ref Unsafe.Add(ref acc0, ((oy * wo) + ox) * k);
                ref int dst1 = ref Unsafe.Add(ref acc0, ((oy * wo) + second) * k);
                for (int b = 0, count; b < blocks; b += count)
                {
                    count = blocks - b >= 4 ? 4 : 1;
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
                            ref sbyte w = ref Unsafe.Add(ref w0, (((ky * groups) + g) * perTap) + (b * FiltersPerVector * 4));
                            var w0v = Vector256.LoadUnsafe(ref w);
                            a0 = AvxVnni.MultiplyWideningAndAdd(a0, x0, w0v);
                            b0 = AvxVnni.MultiplyWideningAndAdd(b0, x1, w0v);
                            if (count == 4)
                            {
                                var w1v = Vector256.LoadUnsafe(ref w, 32);
                                var w2v = Vector256.LoadUnsafe(ref w, 64);
                                var w3v = Vector256.LoadUnsafe(ref w, 96);
                                a1 = AvxVnni.MultiplyWideningAndAdd(a1, x0, w1v);
                                b1 = AvxVnni.MultiplyWideningAndAdd(b1, x1, w1v);
                                a2 = AvxVnni.MultiplyWideningAndAdd(a2, x0, w2v);
                                b2 = AvxVnni.MultiplyWideningAndAdd(b2, x1, w2v);
                                a3 = AvxVnni.MultiplyWideningAndAdd(a3, x0, w3v);
                                b3 = AvxVnni.MultiplyWideningAndAdd(b3, x1, w3v);
                            }
                        }
                    }
                    Store(a0, b, ref offset0, ref dst0);
                    Store(b0, b, ref offset0, ref dst1);
                    if (count == 1)
                    {
                        continue; // the last blocks go one at a time, in a0 and b0
                    }
                    Store(a1, b + 1, ref offset0, ref dst0);
                    Store(a2, b + 2, ref offset0, ref dst0);
                    Store(a3, b + 3, ref offset0, ref dst0);
                    Store(b1, b + 1, ref offset0, ref dst1);
                    Store(b2, b + 2, ref offset0, ref dst1);
                    Store(b3, b + 3, ref offset0, ref dst1);
                }
            }
        }
    }

    /// <summary>acc = 2·Σ w·p − 255·Σ w for one block of 8 filters.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Vector256<int> dot, int block, ref int offsets, ref int dst) =>
        ((dot << 1) - Vector256.LoadUnsafe(ref offsets, (nuint)(block * FiltersPerVector))).StoreUnsafe(ref dst, (nuint)(block * FiltersPerVector));
}
