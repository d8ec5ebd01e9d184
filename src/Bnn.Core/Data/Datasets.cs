namespace Bnn.Data;

/// <summary>Dataset names and the one place that maps a (dataset, directory, split or file) to images.</summary>
public static class Datasets
{
    /// <summary>Records held out from the end of the training split for validation.</summary>
    public const int ValidationCount = 5000;

    /// <summary>
    /// Splits training records into (train, validation): the last <paramref name="validationCount"/> records, at most a
    /// fifth of the set, are validation. The trainer and every tuning step use this one rule.
    /// </summary>
    public static (ImageSet Train, ImageSet Validation) HoldOut(ImageSet all, int validationCount = ValidationCount)
    {
        ArgumentNullException.ThrowIfNull(all);
        int count = Math.Min(validationCount, all.Count / 5);
        return (all.Slice(0, all.Count - count), all.Slice(all.Count - count, count));
    }

    /// <summary>The accepted dataset names.</summary>
    public static IReadOnlyList<string> Names { get; } = ["cifar10", "svhn"];

    /// <summary>
    /// Loads <paramref name="split"/> of <paramref name="dataset"/> from <paramref name="directory"/>, or the single
    /// record file <paramref name="file"/> inside it when given.
    /// </summary>
    public static ImageSet Load(string dataset, string directory, string split, string? file = null)
    {
        if (!Directory.Exists(directory))
        {
            throw new BnnDataException($"{directory}: data directory not found");
        }
        return dataset switch
        {
            "cifar10" => file is null ? Cifar10.LoadSplit(directory, split) : Cifar10.LoadFile(Path.Combine(directory, file)),
            "svhn" => Svhn.LoadFile(Path.Combine(directory, file ?? Svhn.SplitFile(split))),
            _ => throw new ArgumentException($"unknown dataset '{dataset}' (expected one of: {string.Join(", ", Names)})", nameof(dataset)),
        };
    }
}
