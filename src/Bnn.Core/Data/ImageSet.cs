namespace Bnn.Data;

/// <summary>
/// Labeled 8-bit images in planar (C, H, W) order, one image after another. This is the one in-memory layout every
/// reader produces, whatever the file layout was (CIFAR-10 is already planar row-major; SVHN is column-major).
/// </summary>
public sealed class ImageSet
{
    /// <summary>Creates a set from packed pixels and labels; the pixel array length must be count*C*H*W.</summary>
    public ImageSet(byte[] pixels, byte[] labels, int channels, int height, int width, int classes)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        ArgumentNullException.ThrowIfNull(labels);
        if (pixels.Length != (long)labels.Length * channels * height * width)
        {
            throw new ArgumentException($"pixel buffer holds {pixels.Length} bytes, expected {labels.Length}x{channels}x{height}x{width}");
        }
        Pixels = pixels;
        Labels = labels;
        Channels = channels;
        Height = height;
        Width = width;
        Classes = classes;
    }

    /// <summary>All pixels, image-major then channel, row, column.</summary>
    public byte[] Pixels { get; }

    /// <summary>One class index per image.</summary>
    public byte[] Labels { get; }

    /// <summary>Number of images.</summary>
    public int Count => Labels.Length;

    /// <summary>Colour channels per image.</summary>
    public int Channels { get; }

    /// <summary>Image height in pixels.</summary>
    public int Height { get; }

    /// <summary>Image width in pixels.</summary>
    public int Width { get; }

    /// <summary>Number of classes the labels range over.</summary>
    public int Classes { get; }

    /// <summary>Bytes per image (C*H*W).</summary>
    public int ImageSize => Channels * Height * Width;

    /// <summary>The planar pixels of image <paramref name="index"/>.</summary>
    public ReadOnlySpan<byte> Image(int index) => Pixels.AsSpan(index * ImageSize, ImageSize);

    /// <summary>A copy of the images [start, start+count).</summary>
    public ImageSet Slice(int start, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(start);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(start + count, Count);
        return new ImageSet(
            Pixels.AsSpan(start * ImageSize, count * ImageSize).ToArray(),
            Labels.AsSpan(start, count).ToArray(),
            Channels, Height, Width, Classes);
    }

    /// <summary>The first <paramref name="limit"/> images, or this set when it is not larger.</summary>
    public ImageSet Take(int limit) => limit >= Count ? this : Slice(0, limit);

    /// <summary>Concatenates sets of the same geometry, in order.</summary>
    public static ImageSet Concat(IReadOnlyList<ImageSet> parts)
    {
        ArgumentNullException.ThrowIfNull(parts);
        if (parts.Count == 0)
        {
            throw new ArgumentException("nothing to concatenate", nameof(parts));
        }
        var first = parts[0];
        var pixels = new byte[parts.Sum(p => p.Pixels.Length)];
        var labels = new byte[parts.Sum(p => p.Count)];
        int po = 0, lo = 0;
        foreach (var p in parts)
        {
            if (p.Channels != first.Channels || p.Height != first.Height || p.Width != first.Width)
            {
                throw new ArgumentException("image sets differ in geometry", nameof(parts));
            }
            p.Pixels.CopyTo(pixels, po);
            p.Labels.CopyTo(labels, lo);
            po += p.Pixels.Length;
            lo += p.Count;
        }
        return new ImageSet(pixels, labels, first.Channels, first.Height, first.Width, first.Classes);
    }
}
