using Bnn.Model;

namespace Bnn.Engine;

/// <summary>
/// The bit-sliced conv run on several images at once, stacked into one tall image.
/// <para><b>Why.</b> The bit-sliced conv (<see cref="BitSlicedConvStep"/>) counts 512 flat positions per vector, and
/// the cost is per vector. A small layer fills a fraction of its last vector: the CNV's conv4 has 120 flat positions,
/// conv1 840 in two vectors. Stacked, G images share vectors: conv4 with 7 images needs 2 vectors instead of 7.</para>
/// <para><b>Maths.</b> Image g's rows start at tall row g·(H + p), with p rows of the pad value between images, and
/// its output row oy is tall output row g·(H + p) + oy. Output row oy reads image rows oy − p to oy − p + kh − 1;
/// with stride 1 and Ho = H + 2p − kh + 1 those lie within −p to H − 1 + p: the image's own rows and the p pad rows on
/// either side, never a neighbour's. So the tall conv computes each image's own conv exactly; the output rows between
/// images, which read two images, are dropped.</para>
/// <para>Only full groups of <see cref="Images"/> run stacked (<see cref="PackedEngine"/>); the rest run one by one.</para>
/// </summary>
internal sealed class StackedConv
{
    private readonly BitSlicedConvStep step;
    private readonly ConvLayer layer;
    private readonly int inImageWords;
    private readonly int inStrideWords;
    private readonly int outImageWords;
    private readonly int outStrideWords;

    public StackedConv(ConvLayer layer, Shape inShape, Shape outShape, int images)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(images, 1);
        if (!BitSlicedConvStep.Supports(layer))
        {
            throw new ArgumentException("only a layer the bit-sliced conv supports runs stacked", nameof(layer));
        }
        this.layer = layer;
        Images = images;
        var (tallIn, tallOut) = TallShapes(layer, inShape, outShape, images);
        step = new BitSlicedConvStep(layer, tallIn, tallOut);
        int inWords = BitConvention.Words(inShape.Channels), outWords = BitConvention.Words(outShape.Channels);
        int gap = layer.Padding;
        inImageWords = inShape.Height * inShape.Width * inWords;
        inStrideWords = (inShape.Height + gap) * inShape.Width * inWords;
        outImageWords = outShape.Height * outShape.Width * outWords;
        outStrideWords = (inShape.Height + gap) * outShape.Width * outWords;
        InputWords = tallIn.Height * tallIn.Width * inWords;
        OutputWords = step.OutputWords;
    }

    /// <summary>Images per run.</summary>
    public int Images { get; }

    /// <summary>Words of the tall input (see <see cref="NewInput"/>).</summary>
    public int InputWords { get; }

    /// <summary>Words of the tall output.</summary>
    public int OutputWords { get; }

    /// <summary>Words of the tall step's padded planes.</summary>
    public int PaddedWords => step.PaddedWords;

    /// <summary>Accumulators the tall step uses.</summary>
    public int AccumulatorCount => step.AccumulatorCount;

    /// <summary>The shapes of the tall image of <paramref name="images"/> stacked inputs and of its output.</summary>
    public static (Shape In, Shape Out) TallShapes(ConvLayer layer, Shape inShape, Shape outShape, int images)
    {
        ArgumentNullException.ThrowIfNull(layer);
        int height = (images * inShape.Height) + ((images - 1) * layer.Padding);
        return (inShape with { Height = height }, outShape with { Height = height + (2 * layer.Padding) - layer.KernelH + 1 });
    }

    /// <summary>512-position vectors per image that the bit-sliced conv counts with <paramref name="images"/> stacked.</summary>
    public static double VectorsPerImage(ConvLayer layer, Shape inShape, Shape outShape, int images)
    {
        var (_, tallOut) = TallShapes(layer, inShape, outShape, images);
        long flat = (long)tallOut.Height * (inShape.Width + (2 * layer.Padding));
        return Math.Ceiling(flat / 512.0) / images;
    }

    /// <summary>A tall input buffer whose rows between images hold the pad value (they are never overwritten).</summary>
    public ulong[] NewInput()
    {
        var input = new ulong[InputWords];
        if (layer.PadValue < 0)
        {
            // Bit 1 is −1 (BitConvention); the channels past the last one stay 0.
            int words = BitConvention.Words(layer.InChannels);
            var pad = new ulong[words];
            for (int w = 0; w < words; w++)
            {
                int valid = Math.Min(BitConvention.WordBits, layer.InChannels - (w * BitConvention.WordBits));
                pad[w] = valid == BitConvention.WordBits ? ulong.MaxValue : (1UL << valid) - 1;
            }
            for (int g = 0; g + 1 < Images; g++)
            {
                for (int at = (g * inStrideWords) + inImageWords; at < (g + 1) * inStrideWords; at += words)
                {
                    pad.CopyTo(input, at);
                }
            }
        }
        return input;
    }

    /// <summary>
    /// Runs layer <paramref name="index"/> on the <see cref="Images"/> images of <paramref name="members"/>: reads each
    /// one's previous output (its buffer <paramref name="index"/> − 1) and writes its output (buffer <paramref name="index"/>).
    /// <paramref name="input"/> comes from <see cref="NewInput"/>.
    /// </summary>
    public void Run(PackedEngine.Workspace[] members, int index, ulong[] input, ulong[] output, ulong[] padded, int[] acc)
    {
        for (int g = 0; g < Images; g++)
        {
            members[g].Buffers[index - 1].AsSpan(0, inImageWords).CopyTo(input.AsSpan(g * inStrideWords));
        }
        step.Run(input, output, padded, acc);
        for (int g = 0; g < Images; g++)
        {
            output.AsSpan(g * outStrideWords, outImageWords).CopyTo(members[g].Buffers[index]);
        }
    }
}
