namespace Bnn.Data;

/// <summary>SVHN cropped digits (format 2): <c>train_32x32.mat</c> / <c>test_32x32.mat</c>; the reader is in SvhnMat.cs.</summary>
public static partial class Svhn
{
    /// <summary>The official file of a split.</summary>
    public static string SplitFile(string split) => split switch
    {
        "train" => "train_32x32.mat",
        "test" => "test_32x32.mat",
        "extra" => "extra_32x32.mat",
        _ => throw new ArgumentException($"unknown SVHN split '{split}' (expected train, test or extra)", nameof(split)),
    };
}
