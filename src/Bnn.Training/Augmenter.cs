namespace Bnn.Training;

/// <summary>Which training-time image augmentation to apply.</summary>
public enum Augmentation
{
    /// <summary>None: every image as it is stored.</summary>
    None,

    /// <summary>A horizontal flip with probability ½ and no shift.</summary>
    Flip,

    /// <summary>The standard CIFAR augmentation: a 32x32 crop of the image padded by 4, and the flip.</summary>
    CropFlip,
}

/// <summary>The command line's names of the augmentations (<c>bnn train --augment</c>).</summary>
public static class AugmentationNames
{
    /// <summary>Each name and its augmentation.</summary>
    public static IReadOnlyDictionary<string, Augmentation> All { get; } = new Dictionary<string, Augmentation>(StringComparer.Ordinal)
    {
        ["crop-flip"] = Augmentation.CropFlip, ["flip"] = Augmentation.Flip, ["none"] = Augmentation.None,
    };

    /// <summary>The name of <paramref name="augmentation"/>.</summary>
    public static string Of(Augmentation augmentation) => All.First(n => n.Value == augmentation).Key;
}

/// <summary>Draws one image's augmentation from a seeded random source.</summary>
internal sealed class Augmenter(Augmentation mode, Random random)
{
    /// <summary>The largest shift of the crop, in pixels.</summary>
    internal const int MaxShift = 4;

    /// <summary>The source shift (dy, dx) and whether to flip, for the next image.</summary>
    internal (int Dy, int Dx, bool Flip) Next()
    {
        // The crop's draws come first, as they did before the flip-only mode existed, so that crop-and-flip runs draw
        // the same batches as older runs of the same seed.
        int dy = 0, dx = 0;
        if (mode == Augmentation.CropFlip)
        {
            dy = random.Next(-MaxShift, MaxShift + 1);
            dx = random.Next(-MaxShift, MaxShift + 1);
        }
        bool flip = mode != Augmentation.None && random.Next(2) == 1;
        return (dy, dx, flip);
    }

    /// <summary>An augmenter for <paramref name="mode"/>, or null where it changes nothing.</summary>
    internal static Augmenter? For(Augmentation mode, Random random) => mode == Augmentation.None ? null : new Augmenter(mode, random);
}
