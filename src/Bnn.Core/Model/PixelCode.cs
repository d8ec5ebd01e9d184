using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Bnn.Model;

/// <summary>
/// How 8-bit pixels enter the first layer. Both the trainer and the engine feed the integer code
/// <c>2p - 255</c> (odd values in [-255, 255], centred on mid-grey), so the first layer's sums are exact integers in
/// float32 as well as in int32: |sum| ≤ 255·C·kh·kw, far below 2^24. Batch norm learns the scale.
/// Zero padding of the first layer therefore means a mid-grey value, and stays exact.
/// </summary>
public static class PixelCode
{
    /// <summary>Largest absolute code.</summary>
    public const int MaxAbs = 255;

    /// <summary>The integer code of pixel value <paramref name="p"/>.</summary>
    public static int Encode(byte p) => (2 * p) - 255;

    /// <summary>Writes the input layer's level of every pixel of a (C, H, W) image.</summary>
    public static void EncodeImage(ConvLayer inputLayer, ReadOnlySpan<byte> pixels, Span<int> levels)
    {
        // Channel by channel: finding each pixel's channel by a division cost about 10 µs per CNV image, half of
        // the dense engine's whole input layer.
        int plane = pixels.Length / inputLayer.InChannels;
        for (int c = 0; c < inputLayer.InChannels; c++)
        {
            EncodeChannel(inputLayer, c, pixels.Slice(c * plane, plane), levels.Slice(c * plane, plane));
        }
    }

    /// <summary>Writes the levels of pixels that all belong to channel <paramref name="channel"/>.</summary>
    // Fully optimized from its first call: the plane conv calls it per row, and its timings (the engines' kernel
    // choice, bnn bench) run before tiered compilation would replace tier-0 code.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void EncodeChannel<T>(ConvLayer inputLayer, int channel, ReadOnlySpan<byte> pixels, Span<T> levels)
        where T : System.Numerics.IBinaryInteger<T>
    {
        ArgumentNullException.ThrowIfNull(inputLayer);
        if (inputLayer.PixelLevels is { } table)
        {
            var own = table.AsSpan(channel * 256, 256);
            for (int i = 0; i < pixels.Length; i++)
            {
                levels[i] = T.CreateTruncating(own[pixels[i]]);
            }
            return;
        }
        int done = 0;
        if (typeof(T) == typeof(short) && Vector256.IsHardwareAccelerated)
        {
            // 16-bit levels (the plane convs'), 32 at a time: 2p − 255 wraps in 16-bit lanes to the signed level.
            var shorts = MemoryMarshal.CreateSpan(ref Unsafe.As<T, ushort>(ref MemoryMarshal.GetReference(levels)), levels.Length);
            var offset = Vector256.Create((ushort)MaxAbs);
            for (; done + 32 <= pixels.Length; done += 32)
            {
                var (low, high) = Vector256.Widen(Vector256.Create(pixels.Slice(done, 32)));
                ((low + low) - offset).CopyTo(shorts.Slice(done, 16));
                ((high + high) - offset).CopyTo(shorts.Slice(done + 16, 16));
            }
        }
        for (int i = done; i < pixels.Length; i++)
        {
            levels[i] = T.CreateTruncating(Encode(pixels[i]));
        }
    }
}
