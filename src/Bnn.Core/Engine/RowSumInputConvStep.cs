using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// The first layer as sums of shared row sums. Each kernel row of a filter on one channel is one of the 2^kw sign
/// patterns of kw taps. For pattern s, the row sum R_c,s(q) = Σ_kx s_kx·L_c(q + kx) of the level plane L_c is computed
/// once per image at every flat position q and is shared by every filter; a filter's sum at q is then
/// Σ_c Σ_ky R_c,s(q + ky·Wp): kh·C adds, where the taps took kh·kw·C multiply-adds. 3x3 on RGB: 9 adds per filter and
/// position instead of 27 products, and the 8 row sums of a channel cost 10 vector operations per 32 positions (half
/// of them negations of the other half). It is the sharing idea at the granularity of kernel rows, which pays on the
/// input layer because its taps are multi-bit levels rather than bits.
/// <para>Positions are flat, q = y·Wp + x over the padded width Wp, so that a tap is a constant offset; the columns
/// x ≥ the output width are computed and dropped. Lanes are 16-bit, 32 positions to a 512-bit vector (16 to a 256-bit
/// one on AVX2 hosts), which holds every sum when <see cref="ConvLayer.MaxInputMagnitude"/>·kh·kw·C ≤ 32,767 (255·27 =
/// 6,885 for RGB 3x3). Zero padding is level 0 in the planes' border, which is never written. Each filter compares 64
/// positions' sums at once; the 64 filters' masks of a word go to the packed layout through one 64x64 bit transpose.</para>
/// <para>On the Zen 3 host (AVX2, no VNNI) the 256-bit form replaced the VNNI step's three-instruction emulation.</para>
/// </summary>
internal sealed class RowSumInputConvStep : PackedStep
{
    private const int Lanes = 32;               // 16-bit lanes per 512-bit vector; planes are whole 64-byte lines of them
    private const int Group = 2 * Lanes;        // positions compared per filter at once: one 64-bit mask
    private const int NarrowLanes = 16;         // 16-bit lanes per 256-bit vector

    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly int flatWidth;             // Wp, the padded input width
    private readonly int groups;                // groups of 64 flat output positions
    private readonly int rowSumLength;          // shorts per row-sum plane: every position a group's taps read
    private readonly int levelLength;           // shorts per level plane: the row sums' reach plus slack
    private readonly int patterns;              // 2^kw sign patterns of a kernel row
    private readonly int[] terms;               // per filter, its kh·C rows' offsets into the row-sum planes
    private readonly short[] bounds;            // per filter, its bound clamped to the 16-bit range (sums never leave it)
    private readonly ulong[] flips;             // per filter, all ones where its comparison is flipped
    private readonly bool wide;                 // 512-bit vectors, else 256-bit ones

    /// <summary>Whether the CPU runs the 512-bit form (AVX-512BW).</summary>
    internal static bool Has512 => Avx512BW.IsSupported && Vector512.IsHardwareAccelerated;

    /// <summary>Whether the CPU runs the 256-bit form (AVX2).</summary>
    internal static bool Has256 => Avx2.IsSupported && Vector256.IsHardwareAccelerated;

    /// <summary>The vector widths this CPU runs, widest first: true for 512 bits, false for 256 (tests run each).</summary>
    internal static IReadOnlyList<bool> Widths => [.. new[] { true, false }.Where(w => w ? Has512 : Has256)];

    /// <summary>
    /// Whether this step runs <paramref name="layer"/>: AVX2 or AVX-512BW, the input layer at stride 1, kernel rows of at
    /// most 4 taps (at most 16 row-sum planes per channel), and every sum within 16 bits.
    /// </summary>
    public static bool Supports(ConvLayer layer) => (Has512 || Has256) && Fits(layer);

    private static bool Fits(ConvLayer layer) =>
        layer.IsInputLayer && layer.Stride == 1 && layer.KernelW <= 4 && layer.MaxInputMagnitude * layer.TapsPerOutput <= short.MaxValue;

    /// <param name="layer">The input layer.</param>
    /// <param name="inShape">Its input shape.</param>
    /// <param name="outShape">Its output shape.</param>
    /// <param name="wide">512-bit vectors (the default where the CPU has them) or 256-bit ones.</param>
    public RowSumInputConvStep(ConvLayer layer, Shape inShape, Shape outShape, bool? wide = null)
    {
        this.wide = wide ?? Has512;
        if (!Fits(layer) || !(this.wide ? Has512 : Has256))
        {
            throw new ArgumentException($"the {(this.wide ? 512 : 256)}-bit row-sum input conv does not support this layer on this CPU", nameof(layer));
        }
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        int c = layer.InChannels, k = layer.OutChannels, kh = layer.KernelH, kw = layer.KernelW;
        flatWidth = inShape.Width + (2 * layer.Padding);
        patterns = 1 << kw;
        groups = ((outShape.Height * flatWidth) + Group - 1) / Group;
        rowSumLength = RoundUp((groups * Group) + ((kh - 1) * flatWidth), Lanes);
        levelLength = RoundUp(Math.Max(rowSumLength + kw - 1, (inShape.Height + (2 * layer.Padding)) * flatWidth), Lanes) + Lanes;
        terms = new int[k * kh * c];
        bounds = new short[k];
        flips = new ulong[k];
        for (int o = 0; o < k; o++)
        {
            var rows = new List<int>(kh * c);
            for (int ch = 0; ch < c; ch++)
            {
                for (int ky = 0; ky < kh; ky++)
                {
                    int s = 0;
                    for (int kx = 0; kx < kw; kx++)
                    {
                        s |= layer.Weight(o, ch, ky, kx) < 0 ? 1 << kx : 0;
                    }
                    rows.Add((((ch * patterns) + s) * rowSumLength) + (ky * flatWidth));
                }
            }
            rows.CopyTo(terms, o * kh * c);
            bounds[o] = (short)Math.Clamp(layer.Threshold.Bound[o], short.MinValue, short.MaxValue);
            flips[o] = layer.Threshold.Flip[o] ? ulong.MaxValue : 0;
        }
        OutputWords = outShape.Height * outShape.Width * BitConvention.Words(k);
        // Word 0 says where the planes start (AlignedStart), up to 7 words later; then the level planes and the row-sum
        // planes, in shorts. The level planes' borders stay 0: only their interior is ever written.
        PaddedWords = 1 + 7 + (((c * levelLength) + (c * patterns * rowSumLength) + 3) / 4);
    }

    public override bool TakesPixels => true;

    public override bool Splits => groups >= 2;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override ReadOnlySpan<ulong> RunPixels(ReadOnlySpan<byte> pixels, ulong[] output, ulong[] padded, int[] acc)
    {
        Prepare(pixels, padded);
        ThresholdGroups(padded, output, 0, groups);
        return output;
    }

    public override ulong[] PrepareParts(ReadOnlySpan<byte> pixels, ulong[] input, ulong[] padded)
    {
        Prepare(pixels, padded);
        return padded;
    }

    public override void RunPart(ulong[] source, ulong[] output, int[] acc, int part, int parts)
    {
        var (from, to) = PartRange(groups, part, parts, align: 1);
        ThresholdGroups(source, output, from, to);
    }

    private static int RoundUp(int n, int multiple) => (n + multiple - 1) / multiple * multiple;

    /// <summary>
    /// The first word at or after word 1 that starts a 64-byte line. Every plane is a whole number of lines, so the
    /// row sums' 512-bit loads then never straddle two lines: on Intel's Emerald Rapids a split load costs both load
    /// ports' slot, and this step, two loads per add, ran 10.0 µs aligned against 13.7-20.8 µs otherwise on the CNV.
    /// The start is stored in word 0 and read back from there, so a garbage collection that moves the array between
    /// <see cref="PrepareParts"/> and <see cref="RunPart"/> costs speed, never correctness; one that moves it between
    /// images moves the planes, and <see cref="Prepare"/> then clears the array so that their new borders are 0.
    /// </summary>
    private static int AlignedStart(ulong[] words) => 1 + WordsToLine(ref words[1]);

    /// <summary>Writes the image's levels into the padded planes' interior and every row sum from them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Prepare(ReadOnlySpan<byte> pixels, ulong[] padded)
    {
        int c = inShape.Channels, h = inShape.Height, w = inShape.Width, pad = layer.Padding, plane = h * w, kw = layer.KernelW;
        if (pixels.Length < c * plane)
        {
            throw new ArgumentException("the image is smaller than the layer's input shape", nameof(pixels));
        }
        int start = AlignedStart(padded);
        if (padded[0] != (ulong)start)
        {
            // First use, or the collector moved the array: the planes start elsewhere now, and their borders must
            // read 0 there too.
            padded.AsSpan(1).Clear();
            padded[0] = (ulong)start;
        }
        var shorts = MemoryMarshal.Cast<ulong, short>(padded.AsSpan((int)padded[0]));
        Span<Vector256<short>> sums = stackalloc Vector256<short>[patterns];
        for (int ch = 0; ch < c; ch++)
        {
            var levels = shorts.Slice(ch * levelLength, levelLength);
            for (int y = 0; y < h; y++)
            {
                PixelCode.EncodeChannel(layer, ch, pixels.Slice((ch * plane) + (y * w), w), levels.Slice(((y + pad) * flatWidth) + pad, w));
            }
            ref short l = ref MemoryMarshal.GetReference(levels);
            ref short r = ref shorts[(c * levelLength) + (ch * patterns * rowSumLength)];
            if (kw == 3)
            {
                if (wide)
                {
                    RowSums3(ref l, ref r);
                }
                else
                {
                    RowSums3Narrow(ref l, ref r);
                }
                continue;
            }
            // Other row lengths are rare (1x1, 2x2, 4-wide kernels): one 256-bit loop serves both forms.
            for (int q = 0; q < rowSumLength; q += NarrowLanes)
            {
                // All 2^kw sign patterns, tap by tap: each pattern of the first kx taps branches into + and − tap kx.
                var tap = Vector256.LoadUnsafe(ref l, (nuint)q);
                (sums[0], sums[1]) = (tap, -tap);
                for (int kx = 1; kx < kw; kx++)
                {
                    tap = Vector256.LoadUnsafe(ref l, (nuint)(q + kx));
                    for (int s = (1 << kx) - 1; s >= 0; s--)
                    {
                        sums[s | (1 << kx)] = sums[s] - tap;
                        sums[s] += tap;
                    }
                }
                for (int s = 0; s < patterns; s++)
                {
                    sums[s].StoreUnsafe(ref r, (nuint)((s * rowSumLength) + q));
                }
            }
        }
    }

    /// <summary>
    /// The eight patterns of 3 taps in registers (the general loop keeps its partial sums on the stack): with
    /// a = l0 + l1 and b = l0 − l1, patterns 0-3 are a + l2, l2 − b, b + l2, l2 − a and patterns 7-4 their negations.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void RowSums3(ref short l, ref short r)
    {
        int n = rowSumLength;
        for (int q = 0; q < n; q += Lanes)
        {
            var l0 = Vector512.LoadUnsafe(ref l, (nuint)q);
            var l1 = Vector512.LoadUnsafe(ref l, (nuint)(q + 1));
            var l2 = Vector512.LoadUnsafe(ref l, (nuint)(q + 2));
            var (a, b) = (l0 + l1, l0 - l1);
            var (p0, p1, p2, p3) = (a + l2, l2 - b, b + l2, l2 - a);
            ref short at = ref Unsafe.Add(ref r, q);
            p0.StoreUnsafe(ref at);
            p1.StoreUnsafe(ref at, (nuint)n);
            p2.StoreUnsafe(ref at, (nuint)(2 * n));
            p3.StoreUnsafe(ref at, (nuint)(3 * n));
            (-p3).StoreUnsafe(ref at, (nuint)(4 * n));
            (-p2).StoreUnsafe(ref at, (nuint)(5 * n));
            (-p1).StoreUnsafe(ref at, (nuint)(6 * n));
            (-p0).StoreUnsafe(ref at, (nuint)(7 * n));
        }
    }

    /// <summary><see cref="RowSums3"/> in 256-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void RowSums3Narrow(ref short l, ref short r)
    {
        int n = rowSumLength;
        for (int q = 0; q < n; q += NarrowLanes)
        {
            var l0 = Vector256.LoadUnsafe(ref l, (nuint)q);
            var l1 = Vector256.LoadUnsafe(ref l, (nuint)(q + 1));
            var l2 = Vector256.LoadUnsafe(ref l, (nuint)(q + 2));
            var (a, b) = (l0 + l1, l0 - l1);
            var (p0, p1, p2, p3) = (a + l2, l2 - b, b + l2, l2 - a);
            ref short at = ref Unsafe.Add(ref r, q);
            p0.StoreUnsafe(ref at);
            p1.StoreUnsafe(ref at, (nuint)n);
            p2.StoreUnsafe(ref at, (nuint)(2 * n));
            p3.StoreUnsafe(ref at, (nuint)(3 * n));
            (-p3).StoreUnsafe(ref at, (nuint)(4 * n));
            (-p2).StoreUnsafe(ref at, (nuint)(5 * n));
            (-p1).StoreUnsafe(ref at, (nuint)(6 * n));
            (-p0).StoreUnsafe(ref at, (nuint)(7 * n));
        }
    }

    /// <summary>The output bits of the flat positions in groups [<paramref name="from"/>, <paramref name="to"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ThresholdGroups(ulong[] source, ulong[] output, int from, int to)
    {
        int k = layer.OutChannels, perFilter = layer.KernelH * layer.InChannels, words = BitConvention.Words(k);
        int positions = outShape.Height * flatWidth;
        ref short rowSums = ref MemoryMarshal.Cast<ulong, short>(source.AsSpan((int)source[0]))[inShape.Channels * levelLength];
        ref int term0 = ref MemoryMarshal.GetArrayDataReference(terms);
        Span<ulong> masks = stackalloc ulong[64];
        for (int g = from; g < to; g++)
        {
            int first = g * Group;
            ref short at = ref Unsafe.Add(ref rowSums, first);
            for (int word = 0; word < words; word++)
            {
                int filters = Math.Min(64, k - (word * 64));
                for (int j = 0; j < filters; j++)
                {
                    int o = (word * 64) + j;
                    ref int t = ref Unsafe.Add(ref term0, o * perFilter);
                    ulong below = wide ? Below512(ref at, ref t, perFilter, bounds[o]) : Below256(ref at, ref t, perFilter, bounds[o]);
                    // Bit set for −1: −1 exactly when (sum < bound) ≠ flip.
                    masks[j] = below ^ flips[o];
                }
                masks[filters..].Clear();
                PlaneBits.ChannelsToPositions(masks, first, Math.Min(Group, positions - first), flatWidth, outShape.Width, words, word, output);
            }
        }
    }

    /// <summary>Bit i set where the filter's sum at position i of the 64 from <paramref name="at"/> is below <paramref name="bound"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Below512(ref short at, ref int t, int perFilter, short bound)
    {
        Vector512<short> low = default, high = default;
        int i = 0;
        for (; i + 3 <= perFilter; i += 3)
        {
            ref short r0 = ref Unsafe.Add(ref at, Unsafe.Add(ref t, i));
            ref short r1 = ref Unsafe.Add(ref at, Unsafe.Add(ref t, i + 1));
            ref short r2 = ref Unsafe.Add(ref at, Unsafe.Add(ref t, i + 2));
            low += Vector512.LoadUnsafe(ref r0) + Vector512.LoadUnsafe(ref r1) + Vector512.LoadUnsafe(ref r2);
            high += Vector512.LoadUnsafe(ref r0, Lanes) + Vector512.LoadUnsafe(ref r1, Lanes) + Vector512.LoadUnsafe(ref r2, Lanes);
        }
        for (; i < perFilter; i++)
        {
            ref short row = ref Unsafe.Add(ref at, Unsafe.Add(ref t, i));
            low += Vector512.LoadUnsafe(ref row);
            high += Vector512.LoadUnsafe(ref row, Lanes);
        }
        var b = Vector512.Create(bound);
        return Vector512.LessThan(low, b).ExtractMostSignificantBits() | (Vector512.LessThan(high, b).ExtractMostSignificantBits() << Lanes);
    }

    /// <summary><see cref="Below512"/> in four 256-bit vectors, each its own chain of adds.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Below256(ref short at, ref int t, int perFilter, short bound)
    {
        Vector256<short> s0 = default, s1 = default, s2 = default, s3 = default;
        for (int i = 0; i < perFilter; i++)
        {
            ref short row = ref Unsafe.Add(ref at, Unsafe.Add(ref t, i));
            s0 += Vector256.LoadUnsafe(ref row);
            s1 += Vector256.LoadUnsafe(ref row, NarrowLanes);
            s2 += Vector256.LoadUnsafe(ref row, 2 * NarrowLanes);
            s3 += Vector256.LoadUnsafe(ref row, 3 * NarrowLanes);
        }
        var b = Vector256.Create(bound);
        // The comparisons' 16-bit lanes packed to bytes, two vectors at a time (vpacksswb interleaves 128-bit halves,
        // which vpermq puts back in order), then one byte mask per 32 positions.
        var first = Avx2.Permute4x64(Avx2.PackSignedSaturate(Vector256.LessThan(s0, b), Vector256.LessThan(s1, b)).AsInt64(), 0b11_01_10_00);
        var second = Avx2.Permute4x64(Avx2.PackSignedSaturate(Vector256.LessThan(s2, b), Vector256.LessThan(s3, b)).AsInt64(), 0b11_01_10_00);
        return (uint)Avx2.MoveMask(first.AsByte()) | ((ulong)(uint)Avx2.MoveMask(second.AsByte()) << 32);
    }
}
