using System.Formats.Tar;
using System.IO.Compression;

namespace Bnn.Data;

/// <summary>
/// Reads CIFAR-10 in the official binary layout: records of 3073 bytes, a label byte (0-9) followed by the 1024 R,
/// 1024 G and 1024 B bytes of a 32x32 image, planes row-major. Files may be plain <c>.bin</c>, gzipped <c>.bin.gz</c>,
/// or members of the official <c>cifar-10-binary.tar.gz</c>.
/// </summary>
public static class Cifar10
{
    /// <summary>Bytes per record: one label plus 3x32x32 pixels.</summary>
    public const int RecordSize = 1 + ImageBytes;

    private const int ImageBytes = 3 * 32 * 32;
    private const int ClassCount = 10;
    private const string ArchiveName = "cifar-10-binary.tar.gz";

    /// <summary>The record files of a split, in canonical order.</summary>
    public static IReadOnlyList<string> SplitFiles(string split) => split switch
    {
        "train" => ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        "test" => ["test_batch"],
        _ => throw new ArgumentException($"unknown CIFAR-10 split '{split}' (expected train or test)", nameof(split)),
    };

    /// <summary>
    /// Loads a split from <paramref name="directory"/>. Each member is looked up as <c>NAME.bin</c>, then
    /// <c>NAME.bin.gz</c>, then inside <c>cifar-10-binary.tar.gz</c>.
    /// </summary>
    public static ImageSet LoadSplit(string directory, string split)
    {
        var parts = SplitFiles(split).Select(name => LoadMember(directory, name)).ToList();
        return ImageSet.Concat(parts);
    }

    /// <summary>Loads one record file (plain or .gz), for example <c>lossless_test_0-999.bin.gz</c>.</summary>
    public static ImageSet LoadFile(string path)
    {
        if (!File.Exists(path))
        {
            throw new BnnDataException($"{path}: file not found");
        }
        return Parse(ReadMaybeGzip(path), path);
    }

    /// <summary>Parses records from memory; <paramref name="source"/> names the file in error messages.</summary>
    public static ImageSet Parse(byte[] data, string source)
    {
        ArgumentNullException.ThrowIfNull(data);
        int count = data.Length / RecordSize;
        if (data.Length % RecordSize != 0)
        {
            throw new BnnDataException(
                $"{source}: truncated record {count} at byte offset {(long)count * RecordSize}: " +
                $"{data.Length % RecordSize} of {RecordSize} bytes present");
        }
        if (count == 0)
        {
            throw new BnnDataException($"{source}: no records");
        }
        var labels = new byte[count];
        var pixels = new byte[(long)count * ImageBytes];
        for (int r = 0; r < count; r++)
        {
            long offset = (long)r * RecordSize;
            byte label = data[offset];
            if (label >= ClassCount)
            {
                throw new BnnDataException($"{source}: record {r} at byte offset {offset} has label {label}, outside 0-{ClassCount - 1}");
            }
            labels[r] = label;
            Buffer.BlockCopy(data, (int)offset + 1, pixels, r * ImageBytes, ImageBytes);
        }
        return new ImageSet(pixels, labels, 3, 32, 32, ClassCount);
    }

    private static ImageSet LoadMember(string directory, string name)
    {
        foreach (var candidate in new[] { name + ".bin", name + ".bin.gz" })
        {
            var path = Path.Combine(directory, candidate);
            if (File.Exists(path))
            {
                return LoadFile(path);
            }
        }
        var archive = Path.Combine(directory, ArchiveName);
        if (File.Exists(archive))
        {
            return Parse(ReadFromArchive(archive, name + ".bin"), $"{archive}!{name}.bin");
        }
        throw new BnnDataException($"{directory}: no {name}.bin, {name}.bin.gz or {ArchiveName} found");
    }

    private static byte[] ReadFromArchive(string archive, string member)
    {
        try
        {
            using var file = File.OpenRead(archive);
            using var gzip = new GZipStream(file, CompressionMode.Decompress);
            using var tar = new TarReader(gzip);
            while (tar.GetNextEntry() is { } entry)
            {
                if (Path.GetFileName(entry.Name) == member && entry.DataStream is not null)
                {
                    using var ms = new MemoryStream();
                    entry.DataStream.CopyTo(ms);
                    return ms.ToArray();
                }
            }
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or FormatException)
        {
            throw new BnnDataException($"{archive}: not a readable tar.gz archive ({e.Message})", e);
        }
        throw new BnnDataException($"{archive}: has no member {member}");
    }

    internal static byte[] ReadMaybeGzip(string path)
    {
        try
        {
            if (!path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase))
            {
                return File.ReadAllBytes(path);
            }
            using var file = File.OpenRead(path);
            using var gzip = new GZipStream(file, CompressionMode.Decompress);
            using var ms = new MemoryStream();
            gzip.CopyTo(ms);
            return ms.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw new BnnDataException($"{path}: corrupt gzip data ({e.Message})", e);
        }
    }
}
