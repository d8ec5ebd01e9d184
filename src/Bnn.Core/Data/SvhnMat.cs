namespace Bnn.Data;

public static partial class Svhn
{
    /// <summary>Loads an SVHN .mat file.</summary>
    public static ImageSet LoadFile(string path) => throw new BnnDataException($"{path}: SVHN reading not implemented yet");
}
