using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Bnn.Engine.Kernels;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// A stride-1 3x3 binary conv counted bit-sliced: 512 output positions per vector, one bit each, and the mismatch
/// count of every (output, position) built up in carry-save planes instead of by a popcount per position.
/// <para><b>Why.</b> Without VPOPCNTQ the packed kernels spend most of their time turning 64-bit words back into
/// per-position counts (nibble lookups and horizontal sums). Counting vertically, position by position in parallel,
/// needs no horizontal step: a full adder on three 512-bit planes (two <c>vpternlogq</c>) absorbs one plane of
/// 512 positions. A filter's 9 mismatch bits per input channel arrive pre-counted, so each (output, input channel)
/// pair costs five plane loads and about 12 ternary-logic operations per 512 positions, against about 8 x 9 words of
/// XOR and nibble-lookup popcount in the packed layout.</para>
/// <para><b>Maths.</b> With bit 1 = −1 (<see cref="BitConvention"/>), the mismatch bit of tap t is x_t ⊕ w_t and an
/// output's sum is n − 2M, M the mismatches over its n = 9·C taps. The 9 taps of a channel split into three rows of
/// three, g = 0, 1, 2; a row's mismatch count is lo_g + 2·hi_g with lo_g = x_a ⊕ x_b ⊕ x_c ⊕ parity(w_g) and
/// hi_g = maj(x_a ⊕ w_a, x_b ⊕ w_b, x_c ⊕ w_c). Over the three rows, Σ lo_g = s + 2·c with s = X ⊕ parity(w)
/// (X the XOR of all 9 taps) and c = maj(lo_0, lo_1, lo_2). Only 34 planes per channel depend on the image: X and
/// its complement, c for the 8 row-parity patterns, and hi_g for the 8 weight patterns of each row (half of each
/// eight is the complement of the other half). A filter picks five of them: M = Σ_c s + 2·(c + hi_0 + hi_1 + hi_2).</para>
/// <para><b>Counting.</b> Per output, a Harley-Seal carry-save tree: one state plane per power of two; a full adder
/// folds two new planes into a level's state and passes one carry up. Eight channels at a time (see
/// <see cref="CountBlock"/>), so the higher levels are touched rarely. Then M &lt; U, U = ⌊(n − bound)/2⌋ + 1, is
/// one bit-serial comparison, and the output bit is 1 (−1) exactly when (sum ≥ bound) == flip.</para>
/// <para><b>Layout.</b> Each input channel is a bit plane of the padded image stored flat (width Wp = W + 2·pad);
/// output (oy, ox) is flat position q = oy·Wp + ox and tap (ky, kx) reads bit q + ky·Wp + kx, so the 9 tap planes of
/// 512 consecutive q are unaligned 512-bit loads and a shift. Positions with ox ≥ Wo are computed and dropped. The
/// image goes in and the result comes out through 64x64 bit transposes (<see cref="PlaneBits"/>).</para>
/// <para>Channel counts that are not a multiple of 8 are padded with zero planes (no mismatches) and not counted in
/// n. Layers that pad with 0 are not supported (their border correction needs integer sums).</para>
/// <para><b>Speed.</b> On the Zen 4 host it beats the packed conv on the CNV's conv1 by 8 % (53.3 against 57.9 µs) and
/// loses on the smaller layers, whose positions fill a third of a vector or less; on the Intel host, whose byte lookups
/// share one port, it makes the CNV's whole image about 20 % faster. The counting is near its floor of one full adder
/// per plane folded in. The fast engine times whole images with each kernel per layer and keeps this one only where
/// they run 5 % faster (<see cref="PackedEngine.ConvChoices"/>; bench/RESULTS.md). Stacking several images into one
/// tall image fills the vectors of small layers, but gained at most 7 % in the pipeline and is not built (RESULTS).</para>
/// </summary>
internal sealed class BitSlicedConvStep : PackedStep
{
    private const int VectorBits = 512;
    private const int VectorWords = VectorBits / 64;
    private const int Octet = 8;
    private const int Levels = 13; // M ≤ 9·C < 2^13 for C ≤ 910
    private const int PlanesPerChannel = 34;
    private const int ChannelWords = PlanesPerChannel * VectorWords;
    private const int ParityPlane = 0;     // X, then ~X
    private const int LowCarryPlane = 2;   // + row-parity pattern (0..7)
    private const int HighPlane = 10;      // + 8·row + row weight pattern (0..7)
    private const int PicksPerPair = 5;    // s, c, hi_0, hi_1, hi_2
    // One block's channel planes are read by every output, whose counter is saved and reloaded between blocks. On the
    // Zen 4 host 40 KB (16 channels) beat 24, 72 and 150 KB on the CNV's conv1 (timed alone: 83 against 86-96 µs).
    private const int BlockBudgetBytes = 40 * 1024;

    private readonly ConvLayer layer;
    private readonly Shape inShape;
    private readonly Shape outShape;
    private readonly int paddedWidth;
    private readonly int flatOutputs;
    private readonly int vectors;
    private readonly int planeWords;
    private readonly int blockChannels;
    private readonly int paddedChannels;
    private readonly int[] tapOffsets = new int[9];
    private readonly int[] picks;   // (K, padded C, 5) word offsets into a block's channel planes
    private readonly int[] below;   // per output: U, the output is "sum ≥ bound" where M < U
    private readonly ulong[] flip;  // per output: all ones where bit 1 means sum ≥ bound
    private readonly int outWords;
    private readonly int scratchWords;

    public BitSlicedConvStep(ConvLayer layer, Shape inShape, Shape outShape)
    {
        if (!Supports(layer))
        {
            throw new ArgumentException("the bit-sliced conv does not support this layer", nameof(layer));
        }
        this.layer = layer;
        this.inShape = inShape;
        this.outShape = outShape;
        paddedWidth = inShape.Width + (2 * layer.Padding);
        flatOutputs = outShape.Height * paddedWidth;
        vectors = (flatOutputs + VectorBits - 1) / VectorBits;
        for (int t = 0; t < 9; t++)
        {
            tapOffsets[t] = ((t / 3) * paddedWidth) + (t % 3);
        }
        // Every tap load reads 64 bytes from the tap's byte and 8 more for the shift.
        int lastBit = (vectors * VectorBits) + tapOffsets[8] + 64 + 8;
        planeWords = (lastBit + 63) / 64 + 1;
        int c = layer.InChannels;
        paddedChannels = (c + Octet - 1) / Octet * Octet;
        blockChannels = Math.Clamp(BlockBudgetBytes / (ChannelWords * sizeof(ulong)) / Octet * Octet, Octet, paddedChannels);
        picks = BuildPicks(layer, paddedChannels, blockChannels);
        int n = 9 * c;
        below = layer.Threshold.Bound.Select(b => (int)Math.Clamp((((long)n - b) >> 1) + 1, 0, 1L << Levels)).ToArray();
        flip = layer.Threshold.Flip.Select(f => f ? ulong.MaxValue : 0UL).ToArray();
        outWords = BitConvention.Words(outShape.Channels);
        OutputWords = outShape.Height * outShape.Width * outWords;
        PaddedWords = c * planeWords;
        int k = layer.OutChannels;
        scratchWords = ((blockChannels + 1) * ChannelWords) + (k * Levels * VectorWords) + (k * VectorWords);
    }

    /// <summary>Whether the bit-sliced conv can run <paramref name="layer"/>: a binary 3x3, stride 1, ±1 padding, AVX-512F.</summary>
    public static bool Supports(ConvLayer layer)
    {
        ArgumentNullException.ThrowIfNull(layer);
        return Avx512F.IsSupported && !layer.IsInputLayer && layer.KernelH == 3 && layer.KernelW == 3 && layer.Stride == 1
            && (layer.Padding == 0 || layer.PadValue != 0) && 9L * layer.InChannels < (1L << Levels);
    }

    /// <summary>
    /// Per part: one block's channel planes (and a zero channel), every output's counter state, and the output planes,
    /// from the first 64-byte line in the array (<see cref="PackedStep.WordsToLine"/>).
    /// </summary>
    public override int AccumulatorCount => (scratchWords + 7) * 2;

    public override bool Splits => vectors >= 2;

    private static int[] BuildPicks(ConvLayer layer, int paddedChannels, int blockChannels)
    {
        int k = layer.OutChannels, c = layer.InChannels;
        var picks = new int[k * paddedChannels * PicksPerPair];
        for (int o = 0; o < k; o++)
        {
            for (int ch = 0; ch < paddedChannels; ch++)
            {
                var pick = picks.AsSpan(((o * paddedChannels) + ch) * PicksPerPair, PicksPerPair);
                if (ch >= c)
                {
                    // The block's spare channel slot holds zero planes: no mismatches.
                    pick.Fill(blockChannels * ChannelWords);
                    continue;
                }
                int channelBase = (ch % blockChannels) * ChannelWords;
                int parities = 0;
                for (int g = 0; g < 3; g++)
                {
                    int row = 0;
                    for (int x = 0; x < 3; x++)
                    {
                        row |= BitConvention.Bit(layer.Weight(o, ch, g, x)) == 1 ? 1 << x : 0;
                    }
                    parities |= (BitOperations.PopCount((uint)row) & 1) << g;
                    pick[2 + g] = channelBase + ((HighPlane + (8 * g) + row) * VectorWords);
                }
                pick[0] = channelBase + ((ParityPlane + (BitOperations.PopCount((uint)parities) & 1)) * VectorWords);
                pick[1] = channelBase + ((LowCarryPlane + parities) * VectorWords);
            }
        }
        return picks;
    }

    public override ReadOnlySpan<ulong> Run(ReadOnlySpan<ulong> input, ulong[] output, ulong[] padded, int[] acc)
    {
        BuildPlanes(input, padded);
        Convolve(padded, output, acc, 0, vectors);
        return output;
    }

    public override ulong[] PrepareParts(ReadOnlySpan<byte> pixels, ulong[] input, ulong[] padded)
    {
        BuildPlanes(input, padded);
        return padded;
    }

    public override void RunPart(ulong[] source, ulong[] output, int[] acc, int part, int parts)
    {
        var (from, to) = PartRange(vectors, part, parts, align: 1);
        Convolve(source, output, acc, from, to);
    }

    /// <summary>The input's channels as flat bit planes of the padded image, borders set to the pad value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void BuildPlanes(ReadOnlySpan<ulong> input, Span<ulong> planes)
    {
        int c = layer.InChannels, p = layer.Padding, w = inShape.Width, pixels = inShape.Height * w;
        int words = BitConvention.Words(c);
        if (p > 0)
        {
            planes[..(c * planeWords)].Fill(layer.PadValue < 0 ? ulong.MaxValue : 0);
        }
        Span<ulong> masks = stackalloc ulong[64];
        for (int word = 0; word < words; word++)
        {
            int channels = Math.Min(64, c - (word * 64));
            for (int first = 0; first < pixels; first += 64)
            {
                int count = Math.Min(64, pixels - first);
                PlaneBits.PixelsToChannels(input, first, count, words, word, masks);
                for (int j = 0; j < channels; j++)
                {
                    var plane = planes.Slice(((word * 64) + j) * planeWords, planeWords);
                    ulong bits = masks[j];
                    if (p == 0)
                    {
                        // Unpadded, the flat order is the pixel order: 64 pixels are one whole plane word.
                        plane[first >> 6] = bits;
                        continue;
                    }
                    // Runs of one image row each land at their padded flat position.
                    for (int i = 0, y = first / w, x = first % w; i < count; y++, x = 0)
                    {
                        int run = Math.Min(w - x, count - i);
                        Insert(plane, ((y + p) * paddedWidth) + x + p, bits >> i, run);
                        i += run;
                    }
                }
            }
        }
    }

    /// <summary>Overwrites <paramref name="length"/> bits of <paramref name="plane"/> from bit <paramref name="at"/> with the low bits of <paramref name="bits"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Insert(Span<ulong> plane, int at, ulong bits, int length)
    {
        int word = at >> 6, shift = at & 63;
        ulong mask = length == 64 ? ulong.MaxValue : (1UL << length) - 1;
        bits &= mask;
        plane[word] = (plane[word] & ~(mask << shift)) | (bits << shift);
        if (shift + length > 64)
        {
            plane[word + 1] = (plane[word + 1] & ~(mask >> (64 - shift))) | (bits >> (64 - shift));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Convolve(ulong[] planes, ulong[] output, int[] acc, int from, int to)
    {
        var words = MemoryMarshal.Cast<int, ulong>(acc.AsSpan());
        var scratch = words.Slice(WordsToLine(ref words[0]), scratchWords);
        ref ulong channelPlanes = ref scratch[0];
        int k = layer.OutChannels;
        var zero = scratch.Slice(blockChannels * ChannelWords, ChannelWords);
        zero.Clear();
        ref ulong state = ref scratch[(blockChannels + 1) * ChannelWords];
        ref ulong outPlanes = ref Unsafe.Add(ref state, k * Levels * VectorWords);
        ref int pick0 = ref MemoryMarshal.GetArrayDataReference(picks);
        for (int v = from; v < to; v++)
        {
            for (int first = 0; first < paddedChannels; first += blockChannels)
            {
                int count = Math.Min(blockChannels, paddedChannels - first);
                for (int j = 0; j < Math.Min(count, layer.InChannels - first); j++)
                {
                    ChannelPlanes(planes, first + j, v, ref Unsafe.Add(ref channelPlanes, j * ChannelWords));
                }
                bool isFirst = first == 0, isLast = first + count == paddedChannels;
                for (int o = 0; o < k; o++)
                {
                    ref ulong own = ref Unsafe.Add(ref state, o * Levels * VectorWords);
                    CountBlock(ref channelPlanes, ref Unsafe.Add(ref pick0, ((o * paddedChannels) + first) * PicksPerPair), count / 4, ref own, isFirst);
                    if (isLast)
                    {
                        // Bit 1 (−1) exactly when (sum ≥ bound) == flip, and sum ≥ bound exactly when M < U.
                        (LessThan(ref own, below[o]) ^ Vector512.Create(~flip[o])).StoreUnsafe(ref Unsafe.Add(ref outPlanes, o * VectorWords));
                    }
                }
            }
            Pack(ref outPlanes, output, v);
        }
    }

    /// <summary>The 34 planes of channel <paramref name="channel"/> for output vector <paramref name="v"/> (see the class remarks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ChannelPlanes(ulong[] planes, int channel, int v, ref ulong into)
    {
        ref byte plane = ref Unsafe.As<ulong, byte>(ref planes[channel * planeWords]);
        int origin = v * VectorBits;
        var taps = new TapRow();
        for (int g = 0; g < 3; g++)
        {
            var a = Tap(ref plane, origin + tapOffsets[3 * g]);
            var b = Tap(ref plane, origin + tapOffsets[(3 * g) + 1]);
            var c = Tap(ref plane, origin + tapOffsets[(3 * g) + 2]);
            taps[g] = Avx512F.TernaryLogic(a, b, c, 0x96);
            // maj with the row's weight bits flipped in: pattern bit x flips tap x (a = bit 0, b = bit 1, c = bit 2).
            StoreMajorities(a, b, c, ref Unsafe.Add(ref into, (HighPlane + (8 * g)) * VectorWords));
        }
        var parity = Avx512F.TernaryLogic(taps[0], taps[1], taps[2], 0x96);
        parity.StoreUnsafe(ref into, ParityPlane * VectorWords);
        (~parity).StoreUnsafe(ref into, (ParityPlane + 1) * VectorWords);
        StoreMajorities(taps[0], taps[1], taps[2], ref Unsafe.Add(ref into, LowCarryPlane * VectorWords));
    }

    /// <summary>maj(a ⊕ f₀, b ⊕ f₁, c ⊕ f₂) for the 8 flip patterns f; pattern 7 − f is the complement of pattern f.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreMajorities(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, ref ulong into)
    {
        var none = Avx512F.TernaryLogic(a, b, c, 0xE8);
        var flipA = Avx512F.TernaryLogic(a, b, c, 0x8E);
        var flipB = Avx512F.TernaryLogic(a, b, c, 0xB2);
        var flipAB = Avx512F.TernaryLogic(a, b, c, 0x2B);
        none.StoreUnsafe(ref into, 0 * VectorWords);
        flipA.StoreUnsafe(ref into, 1 * VectorWords);
        flipB.StoreUnsafe(ref into, 2 * VectorWords);
        flipAB.StoreUnsafe(ref into, 3 * VectorWords);
        (~flipAB).StoreUnsafe(ref into, 4 * VectorWords);
        (~flipB).StoreUnsafe(ref into, 5 * VectorWords);
        (~flipA).StoreUnsafe(ref into, 6 * VectorWords);
        (~none).StoreUnsafe(ref into, 7 * VectorWords);
    }

    /// <summary>Plane bits [bit, bit + 512) as a vector: an unaligned load from the byte, shifted by the bit within it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> Tap(ref byte plane, int bit)
    {
        ref byte at = ref Unsafe.Add(ref plane, bit >> 3);
        var low = Vector512.LoadUnsafe(ref at).AsUInt64();
        int shift = bit & 7;
        if (shift == 0)
        {
            return low;
        }
        var high = Vector512.LoadUnsafe(ref Unsafe.Add(ref at, 8)).AsUInt64();
        return Vector512.ShiftRightLogical(low, shift) | Vector512.ShiftLeft(high, 64 - shift);
    }

    /// <summary>
    /// Adds one block's channels (5 picked planes each, <paramref name="quads"/> groups of 4) to one output's counter
    /// levels in <paramref name="state"/> (from zero if <paramref name="fromZero"/>). One method with the levels in
    /// locals, so that they stay in registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void CountBlock(ref ulong planes, ref int pick, int quads, ref ulong state, bool fromZero)
    {
        if (fromZero)
        {
            MemoryMarshal.CreateSpan(ref state, Levels * VectorWords).Clear();
        }
        var l1 = Vector512.LoadUnsafe(ref state, 0 * VectorWords);
        var l2 = Vector512.LoadUnsafe(ref state, 1 * VectorWords);
        var l4 = Vector512.LoadUnsafe(ref state, 2 * VectorWords);
        var l8 = Vector512.LoadUnsafe(ref state, 3 * VectorWords);
        var l16 = Vector512.LoadUnsafe(ref state, 4 * VectorWords);
        var l32 = Vector512.LoadUnsafe(ref state, 5 * VectorWords);
        var l64 = Vector512.LoadUnsafe(ref state, 6 * VectorWords);
        var l128 = Vector512.LoadUnsafe(ref state, 7 * VectorWords);
        var l256 = Vector512.LoadUnsafe(ref state, 8 * VectorWords);
        var l512 = Vector512.LoadUnsafe(ref state, 9 * VectorWords);
        var l1024 = Vector512.LoadUnsafe(ref state, 10 * VectorWords);
        var l2048 = Vector512.LoadUnsafe(ref state, 11 * VectorWords);
        var l4096 = Vector512.LoadUnsafe(ref state, 12 * VectorWords);
        var pending = Vector512<ulong>.Zero;
        for (int q = 0; q < quads; q++, pick = ref Unsafe.Add(ref pick, 4 * PicksPerPair))
        {
            // Per channel: s (weight 1), then c + hi₀ + hi₁ + hi₂ (weight 2) as t (2) + d (4) by one full adder.
            var (sA, cA, tA, dA) = Channel(ref planes, ref pick);
            var (sB, cB, tB, dB) = Channel(ref planes, ref Unsafe.Add(ref pick, PicksPerPair));
            var x1 = FullAdd(ref l1, sA, sB);
            var y1 = FullAdd(ref l2, cA, tA);
            var y2 = FullAdd(ref l2, cB, tB);
            var z1 = FullAdd(ref l4, dA, dB);
            var z2 = FullAdd(ref l4, y1, y2);
            var (sC, cC, tC, dC) = Channel(ref planes, ref Unsafe.Add(ref pick, 2 * PicksPerPair));
            var (sD, cD, tD, dD) = Channel(ref planes, ref Unsafe.Add(ref pick, 3 * PicksPerPair));
            var x2 = FullAdd(ref l1, sC, sD);
            var y3 = FullAdd(ref l2, cC, tC);
            var y4 = FullAdd(ref l2, cD, tD);
            var y5 = FullAdd(ref l2, x1, x2);
            var z3 = FullAdd(ref l4, dC, dD);
            var z4 = FullAdd(ref l4, y3, y4);
            var z5 = HalfAdd(ref l4, y5);
            var e1 = FullAdd(ref l8, z1, z2);
            var e2 = FullAdd(ref l8, z3, z4);
            var e3 = HalfAdd(ref l8, z5);
            var f1 = FullAdd(ref l16, e1, e2);
            var f2 = HalfAdd(ref l16, e3);
            var g = FullAdd(ref l32, f1, f2);
            if ((q & 1) == 0)
            {
                pending = g;
                continue;
            }
            // Two quads make one carry into the 128s; above that a half adder per level, once per 8 channels.
            var carry = FullAdd(ref l64, pending, g);
            carry = HalfAdd(ref l128, carry);
            carry = HalfAdd(ref l256, carry);
            carry = HalfAdd(ref l512, carry);
            carry = HalfAdd(ref l1024, carry);
            carry = HalfAdd(ref l2048, carry);
            l4096 ^= carry;
        }
        l1.StoreUnsafe(ref state, 0 * VectorWords);
        l2.StoreUnsafe(ref state, 1 * VectorWords);
        l4.StoreUnsafe(ref state, 2 * VectorWords);
        l8.StoreUnsafe(ref state, 3 * VectorWords);
        l16.StoreUnsafe(ref state, 4 * VectorWords);
        l32.StoreUnsafe(ref state, 5 * VectorWords);
        l64.StoreUnsafe(ref state, 6 * VectorWords);
        l128.StoreUnsafe(ref state, 7 * VectorWords);
        l256.StoreUnsafe(ref state, 8 * VectorWords);
        l512.StoreUnsafe(ref state, 9 * VectorWords);
        l1024.StoreUnsafe(ref state, 10 * VectorWords);
        l2048.StoreUnsafe(ref state, 11 * VectorWords);
        l4096.StoreUnsafe(ref state, 12 * VectorWords);
    }

    /// <summary>All ones where the count in <paramref name="levels"/> is below <paramref name="bound"/> (0 ≤ bound ≤ 2^13).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector512<ulong> LessThan(ref ulong levels, int bound)
    {
        if (bound >= 1 << Levels)
        {
            return Vector512<ulong>.AllBitsSet;
        }
        // Bit by bit from the lowest: where bound's bit is 1, M's bit 0 is enough; where it is 0, M's bit must be 0 too.
        var less = Vector512<ulong>.Zero;
        for (int i = 0; i < Levels; i++)
        {
            var bit = Vector512.LoadUnsafe(ref levels, (nuint)(i * VectorWords));
            less = ((bound >> i) & 1) != 0 ? less | ~bit : less & ~bit;
        }
        return less;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<ulong> S, Vector512<ulong> C, Vector512<ulong> T, Vector512<ulong> D) Channel(ref ulong planes, ref int pick)
    {
        var s = Vector512.LoadUnsafe(ref planes, (nuint)pick);
        var c = Vector512.LoadUnsafe(ref planes, (nuint)Unsafe.Add(ref pick, 1));
        var h0 = Vector512.LoadUnsafe(ref planes, (nuint)Unsafe.Add(ref pick, 2));
        var h1 = Vector512.LoadUnsafe(ref planes, (nuint)Unsafe.Add(ref pick, 3));
        var h2 = Vector512.LoadUnsafe(ref planes, (nuint)Unsafe.Add(ref pick, 4));
        return (s, c, Avx512F.TernaryLogic(h0, h1, h2, 0x96), Avx512F.TernaryLogic(h0, h1, h2, 0xE8));
    }

    /// <summary>state + a + b = state' + 2·carry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> FullAdd(ref Vector512<ulong> state, Vector512<ulong> a, Vector512<ulong> b)
    {
        var carry = Avx512F.TernaryLogic(state, a, b, 0xE8);
        state = Avx512F.TernaryLogic(state, a, b, 0x96);
        return carry;
    }

    /// <summary>state + a = state' + 2·carry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> HalfAdd(ref Vector512<ulong> state, Vector512<ulong> a)
    {
        var carry = state & a;
        state ^= a;
        return carry;
    }

    /// <summary>Thresholded output planes of vector <paramref name="v"/> to packed pixels, 64 positions x 64 outputs per transpose.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Pack(ref ulong outPlanes, ulong[] output, int v)
    {
        int k = layer.OutChannels, wo = outShape.Width;
        Span<ulong> masks = stackalloc ulong[64];
        for (int chunk = 0; chunk < VectorWords; chunk++)
        {
            int first = (v * VectorBits) + (chunk * 64);
            if (first >= flatOutputs)
            {
                break;
            }
            for (int word = 0; word < outWords; word++)
            {
                for (int j = 0; j < 64; j++)
                {
                    int o = (word * 64) + j;
                    masks[j] = o < k ? Unsafe.Add(ref outPlanes, (o * VectorWords) + chunk) : 0;
                }
                PlaneBits.ChannelsToPositions(masks, first, Math.Min(64, flatOutputs - first), paddedWidth, wo, outWords, word, output);
            }
        }
    }

    [InlineArray(3)]
    private struct TapRow
    {
        private Vector512<ulong> element;
    }
}
