using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// A binary conv as sums of shared row counts: result sharing at the granularity of kernel rows, in byte lanes.
/// Measured in session 19 and not adopted: 1.4-1.8x slower than the best dense kernel on every CNV layer
/// (bench/RESULTS.md, "Row sums for binary layers").
/// <para><b>The maths.</b> A filter's kernel row on one channel is one of 2^kw sign patterns σ. Its agreements with
/// the input at flat position q, h_σ(q) = #{kx : x(q + kx) = σ_kx} ∈ [0, kw], depend on the channel and the pattern
/// only, so they are computed once per channel and shared by all K filters. A filter's agreement count is
/// A(q) = Σ_c Σ_ky h_σ(c,ky)(q + ky·Wp), and its dot product is 2A − n with n = kh·kw·C taps (XNOR-popcount counts
/// the same agreements, bit by bit). All 2^kw patterns are stored (the complement of σ counts kw − h_σ), so that every
/// filter makes the same number of adds and its loop exits predict well (a version that stored half and subtracted
/// the complements ran no faster). One byte lane holds one position, 64 to a 512-bit vector, and a filter costs one vector add per
/// (channel, kernel row) and 64 positions where the packed conv XORs and counts kw·64 bits.
/// </para>
/// <para><b>Exact in bytes.</b> A block of channels whose count is at most kh·kw·C_b ≤ 255 comes out exact in a byte, and is then widened into 16-bit
/// counts: the low bytes (even positions) and the high bytes (odd positions) apart, so no lanes cross. The filter
/// compares A ≥ ⌈(bound + n)/2⌉, the same test as dot ≥ bound, and the even and odd masks interleave with PDEP.</para>
/// <para><b>Layout.</b> The input is unpacked once per image (64 pixels x 64 channels per bit transpose) into byte
/// planes of agreement with +1: 1 for +1, 0 for −1, padding included, at flat positions q = y·Wp + x of the padded
/// image, so a tap is a constant offset. Outputs with x ≥ the output width are computed and dropped. Per tile of
/// 128 positions and block of channels the pattern counts are written for each kernel row already shifted by
/// ky·Wp, so that every load of the hot loop starts on a 64-byte line (a split load costs Intel both load ports), and
/// the block's counts (at most 24 KB: 8 channels for 3x3) stay in L1 while all K filters read them. Two vectors per tile let one offset
/// load feed two adds. ±1 padding only: zero padding would break the count of n agreements.</para>
/// </summary>
internal sealed class RowSumConvStep : PackedStep
{
    private const int Lanes = 64;                      // byte lanes per 512-bit vector: positions per vector
    private const int TileVectors = 2;
    private const int Tile = Lanes * TileVectors;      // positions per tile
    private const int BlockBudgetBytes = 24 * 1024;    // one block's pattern counts, with the accumulators, in L1

    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly int flatWidth;                    // Wp, the padded input width
    private readonly int positions;                    // Ho·Wp flat output positions
    private readonly int tiles;
    private readonly int planeLength;                  // bytes per input plane: every position a tile's taps read
    private readonly int patterns;                     // 2^kw sign patterns per kernel row
    private readonly (int First, int Count)[] blocks;
    private readonly int[] terms;                      // per (block, filter): the offsets of its kh·C_b pattern counts
    private readonly ushort[] minimumAgreements;       // per filter: the least A that means dot ≥ bound
    private readonly ulong[] flips;                    // per filter: all ones where its comparison is flipped
    private readonly int countBytes;                   // per part: the largest block's pattern counts
    private readonly int words;                        // output words per pixel

    /// <summary>
    /// Whether this step runs <paramref name="layer"/>: AVX-512BW and BMI2, a binary layer at stride 1 with ±1 or no
    /// padding, kernel rows of at most 4 taps, and every count within 16 bits.
    /// </summary>
    public static bool Supports(ConvLayer layer) =>
        Avx512BW.IsSupported && Vector512.IsHardwareAccelerated && Bmi2.X64.IsSupported
        && !layer.IsInputLayer && layer.Stride == 1 && (layer.Padding == 0 || layer.PadValue != 0)
        && layer.KernelW <= 4 && layer.KernelH * layer.KernelW <= byte.MaxValue && layer.TapsPerOutput < ushort.MaxValue;

    public RowSumConvStep(ConvLayer layer, Shape inShape, Shape outShape)
    {
        if (!Supports(layer))
        {
            throw new ArgumentException("the row-sum conv does not support this layer", nameof(layer));
        }
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        int c = layer.InChannels, k = layer.OutChannels, kh = layer.KernelH, kw = layer.KernelW;
        flatWidth = inShape.Width + (2 * layer.Padding);
        positions = outShape.Height * flatWidth;
        tiles = (positions + Tile - 1) / Tile;
        patterns = 1 << kw;
        planeLength = RoundUp(Math.Max((tiles * Tile) + ((kh - 1) * flatWidth) + kw, (inShape.Height + (2 * layer.Padding)) * flatWidth) + Lanes, Lanes);
        words = BitConvention.Words(k);

        // Equal blocks of at most 255 / (kh·kw) channels (exact bytes) and at most the budget's worth of counts.
        int perChannel = kh * patterns * Tile;
        int most = Math.Max(1, Math.Min(byte.MaxValue / (kh * kw), BlockBudgetBytes / perChannel));
        int count = (c + most - 1) / most;
        blocks = new (int, int)[count];
        for (int b = 0, first = 0; b < count; b++)
        {
            int size = (c - first) / (count - b);
            blocks[b] = (first, size);
            first += size;
        }
        countBytes = blocks.Max(b => b.Count) * perChannel;

        terms = new int[k * c * kh];
        int next = 0;
        foreach (var (first, channels) in blocks)
        {
            for (int o = 0; o < k; o++)
            {
                for (int j = 0; j < channels; j++)
                {
                    for (int ky = 0; ky < kh; ky++)
                    {
                        int sigma = 0;
                        for (int kx = 0; kx < kw; kx++)
                        {
                            sigma |= layer.Weight(o, first + j, ky, kx) < 0 ? 1 << kx : 0;
                        }
                        terms[next++] = ((((j * kh) + ky) * patterns) + sigma) * Tile;
                    }
                }
            }
        }

        int n = kh * kw * c;
        minimumAgreements = new ushort[k];
        flips = new ulong[k];
        for (int o = 0; o < k; o++)
        {
            // dot = 2A − n ≥ bound ⇔ A ≥ ⌈(bound + n) / 2⌉; A lies in [0, n], so n + 1 means never.
            long least = (long)Math.Ceiling((layer.Threshold.Bound[o] + (double)n) / 2);
            minimumAgreements[o] = (ushort)Math.Clamp(least, 0, n + 1);
            flips[o] = layer.Threshold.Flip[o] ? ulong.MaxValue : 0;
        }
        OutputWords = outShape.Height * outShape.Width * words;
        // Word 0 holds where the planes start (a 64-byte line, see PlaneStart), up to 7 words later.
        PaddedWords = 1 + 7 + (((c * planeLength) + 7) / 8);
    }

    /// <summary>Per part: the block's pattern counts, the 16-bit counts of a tile (even and odd positions) and its output masks, in ints.</summary>
    public override int AccumulatorCount =>
        (Lanes + countBytes + (layer.OutChannels * TileVectors * 2 * Lanes) + (TileVectors * words * 64 * sizeof(ulong))) / sizeof(int);

    public override bool Splits => tiles >= 2;

    public override ReadOnlySpan<ulong> Run(ReadOnlySpan<ulong> input, ulong[] output, ulong[] padded, int[] acc)
    {
        Unpack(input, padded);
        Convolve(padded, output, acc, 0, tiles);
        return output;
    }

    public override ulong[] PrepareParts(ReadOnlySpan<byte> pixels, ulong[] input, ulong[] padded)
    {
        Unpack(input, padded);
        return padded;
    }

    public override void RunPart(ulong[] source, ulong[] output, int[] acc, int part, int parts)
    {
        var (from, to) = PartRange(tiles, part, parts, align: 1);
        Convolve(source, output, acc, from, to);
    }

    private static int RoundUp(int n, int multiple) => (n + multiple - 1) / multiple * multiple;

    /// <summary>Bytes from <paramref name="origin"/> to the first 64-byte line at or after it.</summary>
    private static unsafe int ToLine(ref byte origin) => (int)((64 - ((nuint)Unsafe.AsPointer(ref origin) % 64)) % 64);

    /// <summary>
    /// Writes the planes of agreement with +1 (borders: the pad value) from the packed input. They start on a 64-byte
    /// line, recorded in word 0, so that the parts find them even if the collector moves the array in between.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Unpack(ReadOnlySpan<ulong> input, ulong[] padded)
    {
        var bytes = MemoryMarshal.AsBytes(padded.AsSpan(1));
        int start = ToLine(ref bytes[0]);
        padded[0] = (ulong)start;
        var planes = bytes.Slice(start, inShape.Channels * planeLength);
        int pixels = inShape.Height * inShape.Width, inWords = BitConvention.Words(inShape.Channels);
        int p = layer.Padding, w = inShape.Width;
        if (p > 0)
        {
            planes.Fill(layer.PadValue > 0 ? (byte)1 : (byte)0);
        }
        Span<ulong> masks = stackalloc ulong[64];
        Span<byte> row = stackalloc byte[Lanes];
        for (int word = 0; word < inWords; word++)
        {
            int channels = Math.Min(64, inShape.Channels - (word * 64));
            for (int first = 0; first < pixels; first += 64)
            {
                int count = Math.Min(64, pixels - first);
                PlaneBits.PixelsToChannels(input, first, count, inWords, word, masks);
                for (int j = 0; j < channels; j++)
                {
                    var plane = planes.Slice(((word * 64) + j) * planeLength, planeLength);
                    if (p == 0)
                    {
                        // Unpadded planes are the packed pixel order: 64 values in place (the tail spills into slack).
                        PlaneBits.PlusOnes(masks[j]).StoreUnsafe(ref plane[first]);
                        continue;
                    }
                    PlaneBits.PlusOnes(masks[j]).StoreUnsafe(ref row[0]);
                    for (int i = 0, y = first / w, x = first % w; i < count; y++, x = 0)
                    {
                        int run = Math.Min(w - x, count - i);
                        row.Slice(i, run).CopyTo(plane.Slice(((y + p) * flatWidth) + x + p, run));
                        i += run;
                    }
                }
            }
        }
    }

    /// <summary>The output bits of tiles [<paramref name="from"/>, <paramref name="to"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Convolve(ulong[] source, ulong[] output, int[] scratch, int from, int to)
    {
        ref byte planes = ref Unsafe.Add(ref MemoryMarshal.AsBytes(source.AsSpan(1))[0], (int)source[0]);
        var part = MemoryMarshal.AsBytes(scratch.AsSpan());
        int aligned = ToLine(ref part[0]);
        ref byte counts = ref part[aligned];
        ref ushort wide = ref Unsafe.As<byte, ushort>(ref part[aligned + countBytes]);
        var masks = MemoryMarshal.Cast<byte, ulong>(part.Slice(aligned + countBytes + (layer.OutChannels * TileVectors * 2 * Lanes), TileVectors * words * 64 * sizeof(ulong)));
        int k = layer.OutChannels, last = blocks.Length - 1;
        ref int term0 = ref MemoryMarshal.GetArrayDataReference(terms);
        for (int t = from; t < to; t++)
        {
            int q0 = t * Tile;
            for (int b = 0; b <= last; b++)
            {
                PatternCounts(ref planes, ref counts, b, q0);
                int all = blocks[b].Count * layer.KernelH;
                ref int blockTerms = ref Unsafe.Add(ref term0, blocks[b].First * layer.KernelH * k);
                for (int o = 0; o < k; o++)
                {
                    // A fixed number of adds per filter, in pairs: every branch here is taken the same way for each filter.
                    Vector512<byte> s0 = default, s1 = default, u0 = default, u1 = default;
                    ref int term = ref Unsafe.Add(ref blockTerms, o * all);
                    int i = 0;
                    for (; i + 2 <= all; i += 2)
                    {
                        ref byte r0 = ref Unsafe.Add(ref counts, Unsafe.Add(ref term, i));
                        ref byte r1 = ref Unsafe.Add(ref counts, Unsafe.Add(ref term, i + 1));
                        s0 += Vector512.LoadUnsafe(ref r0);
                        s1 += Vector512.LoadUnsafe(ref r0, Lanes);
                        u0 += Vector512.LoadUnsafe(ref r1);
                        u1 += Vector512.LoadUnsafe(ref r1, Lanes);
                    }
                    if (i < all)
                    {
                        ref byte r0 = ref Unsafe.Add(ref counts, Unsafe.Add(ref term, i));
                        s0 += Vector512.LoadUnsafe(ref r0);
                        s1 += Vector512.LoadUnsafe(ref r0, Lanes);
                    }
                    ref ushort own = ref Unsafe.Add(ref wide, o * TileVectors * 2 * Vector512<ushort>.Count);
                    Widen(s0 + u0, ref own, b, last, o, masks, 0);
                    Widen(s1 + u1, ref Unsafe.Add(ref own, 2 * Vector512<ushort>.Count), b, last, o, masks, 1);
                }
            }
            for (int v = 0; v < TileVectors; v++)
            {
                int first = q0 + (v * Lanes);
                if (first >= positions)
                {
                    break;
                }
                for (int word = 0; word < words; word++)
                {
                    var wordMasks = masks.Slice(((v * words) + word) * 64, 64);
                    wordMasks[Math.Min(64, k - (word * 64))..].Clear();
                    PlaneBits.ChannelsToPositions(wordMasks, first, Math.Min(Lanes, positions - first), flatWidth, outShape.Width, words, word, output);
                }
            }
        }
    }

    /// <summary>
    /// Adds one vector's block sums (exact bytes) into the 16-bit counts, even and odd positions apart; after the last
    /// block, compares them instead and writes filter <paramref name="o"/>'s mask.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Widen(Vector512<byte> sum, ref ushort wide, int block, int last, int o, Span<ulong> masks, int v)
    {
        var even = sum.AsUInt16() & Vector512.Create((ushort)0xFF);
        var odd = Vector512.ShiftRightLogical(sum.AsUInt16(), 8);
        if (block > 0)
        {
            even += Vector512.LoadUnsafe(ref wide);
            odd += Vector512.LoadUnsafe(ref wide, (nuint)Vector512<ushort>.Count);
        }
        if (block < last)
        {
            even.StoreUnsafe(ref wide);
            odd.StoreUnsafe(ref wide, (nuint)Vector512<ushort>.Count);
            return;
        }
        var least = Vector512.Create(minimumAgreements[o]);
        ulong atLeast = Bmi2.X64.ParallelBitDeposit(Vector512.GreaterThanOrEqual(even, least).ExtractMostSignificantBits(), 0x5555_5555_5555_5555UL)
            | Bmi2.X64.ParallelBitDeposit(Vector512.GreaterThanOrEqual(odd, least).ExtractMostSignificantBits(), 0xAAAA_AAAA_AAAA_AAAAUL);
        // Bit set for −1: +1 exactly when (dot ≥ bound) ≠ flip.
        masks[(((v * words) + (o >> 6)) * 64) + (o & 63)] = ~(atLeast ^ flips[o]);
    }

    /// <summary>
    /// Block <paramref name="b"/>'s pattern counts for the tile at <paramref name="q0"/>: per channel j, kernel row ky and
    /// stored pattern s, a row of <see cref="Tile"/> counts h_s(q + ky·Wp) at offset ((j·kh + ky)·patterns + s)·Tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void PatternCounts(ref byte planes, ref byte counts, int b, int q0)
    {
        var (first, channels) = blocks[b];
        int kh = layer.KernelH, kw = layer.KernelW;
        var one = Vector512<byte>.One;
        Span<Vector512<byte>> sums = stackalloc Vector512<byte>[patterns];
        for (int j = 0; j < channels; j++)
        {
            for (int ky = 0; ky < kh; ky++)
            {
                ref byte src = ref Unsafe.Add(ref planes, ((first + j) * planeLength) + q0 + (ky * flatWidth));
                ref byte dst = ref Unsafe.Add(ref counts, ((j * kh) + ky) * patterns * Tile);
                for (int at = 0; at < Tile; at += Lanes)
                {
                    ref byte x = ref Unsafe.Add(ref src, at);
                    ref byte d = ref Unsafe.Add(ref dst, at);
                    var e0 = Vector512.LoadUnsafe(ref x);
                    if (kw == 3)
                    {
                        // Each tap agrees with +1 (e) or −1 (1 − e); pattern 7 − σ is pattern σ's complement, 3 − h.
                        var e1 = Vector512.LoadUnsafe(ref x, 1);
                        var e2 = Vector512.LoadUnsafe(ref x, 2);
                        var (a, c) = (e0 + e1, e0 - e1);
                        var (h0, h1, h2, h3) = (a + e2, c + e2 + one, a - e2 + one, c - e2 + (one + one));
                        var three = Vector512.Create((byte)3);
                        h0.StoreUnsafe(ref d);
                        h1.StoreUnsafe(ref d, 2 * Tile);
                        h2.StoreUnsafe(ref d, 4 * Tile);
                        h3.StoreUnsafe(ref d, 6 * Tile);
                        (three - h3).StoreUnsafe(ref d, 1 * Tile);
                        (three - h2).StoreUnsafe(ref d, 3 * Tile);
                        (three - h1).StoreUnsafe(ref d, 5 * Tile);
                        (three - h0).StoreUnsafe(ref d, 7 * Tile);
                        continue;
                    }
                    (sums[0], sums[1]) = (e0, one - e0);
                    for (int kx = 1; kx < kw; kx++)
                    {
                        var e = Vector512.LoadUnsafe(ref x, (nuint)kx);
                        var m = one - e;
                        for (int s = (1 << kx) - 1; s >= 0; s--)
                        {
                            sums[s | (1 << kx)] = sums[s] + m;
                            sums[s] += e;
                        }
                    }
                    for (int s = 0; s < patterns; s++)
                    {
                        sums[s].StoreUnsafe(ref d, (nuint)(s * Tile));
                    }
                }
            }
        }
    }
}
