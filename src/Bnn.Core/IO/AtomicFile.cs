namespace Bnn.IO;

/// <summary>
/// Every file the toolkit writes (models, checkpoints, logs, ONNX, JSON reports) goes through here, so that a process
/// killed at any moment (sessions here end by killing what runs) leaves either the old file or the new one, never a
/// torn one: the bytes go to <c>path.tmp</c>, are flushed to disk, and the temporary file is renamed over the target.
/// </summary>
internal static class AtomicFile
{
    /// <summary>Writes <paramref name="path"/> through <paramref name="write"/>, creating its directory if needed.</summary>
    public static void Write(string path, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(write);
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + ".tmp";
        try
        {
            using (var stream = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            // A failed write must not leave a stray partial file behind beside the intact old one.
            File.Delete(tmp);
            throw;
        }
    }

    /// <summary>Writes <paramref name="bytes"/> to <paramref name="path"/>.</summary>
    public static void WriteAllBytes(string path, byte[] bytes)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        Write(path, stream => stream.Write(bytes));
    }

    /// <summary>Writes <paramref name="text"/> to <paramref name="path"/> as UTF-8 without a byte-order mark.</summary>
    public static void WriteAllText(string path, string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        WriteAllBytes(path, System.Text.Encoding.UTF8.GetBytes(text));
    }

    /// <summary>Copies <paramref name="source"/> to <paramref name="destination"/>, replacing it.</summary>
    public static void Copy(string source, string destination)
    {
        using var input = File.OpenRead(source);
        Write(destination, input.CopyTo);
    }
}
