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
        // Channel by channel: a division per pixel to find its channel cost more than the engines' whole input layer.
        int plane = pixels.Length / inputLayer.InChannels;
        for (int c = 0; c < inputLayer.InChannels; c++)
        {
            var source = pixels.Slice(c * plane, plane);
            var target = levels.Slice(c * plane, plane);
            if (inputLayer.PixelLevels is { } table)
            {
                var own = table.AsSpan(c * 256, 256);
                for (int i = 0; i < source.Length; i++)
                {
                    target[i] = own[source[i]];
                }
            }
            else
            {
                for (int i = 0; i < source.Length; i++)
                {
                    target[i] = Encode(source[i]);
                }
            }
        }
    }
}
