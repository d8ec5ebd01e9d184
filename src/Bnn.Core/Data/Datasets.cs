namespace Bnn.Data;

/// <summary>Dataset names and the one place that maps a (dataset, directory, split or file) to images.</summary>
public static class Datasets
{
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
