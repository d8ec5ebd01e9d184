using Bnn.IO;

namespace Bnn.Tests.IO;

public sealed class AtomicFileTests
{
    [Fact]
    public void Write_CreatesTheDirectory_AndReplacesAnOldFile()
    {
        using var dir = new TempDirectory();
        var path = Path.Combine(dir.Path, "a", "b", "model.bin");
        AtomicFile.WriteAllBytes(path, [1, 2, 3]);
        AtomicFile.WriteAllText(path, "new");
        Assert.Equal("new", File.ReadAllText(path));
        Assert.False(File.Exists(path + ".tmp"));
    }

    [Fact]
    public void Write_ThatFailsMidway_KeepsTheOldFile_AndLeavesNoTemporary()
    {
        using var dir = new TempDirectory();
        var path = dir.File("checkpoint");
        AtomicFile.WriteAllText(path, "old");
        var failure = Assert.Throws<IOException>(() => AtomicFile.Write(path, stream =>
        {
            stream.Write("half of the n"u8);
            throw new IOException("disk full");
        }));
        Assert.Equal("disk full", failure.Message);
        Assert.Equal("old", File.ReadAllText(path));
        Assert.False(File.Exists(path + ".tmp"));
    }

    [Fact]
    public void Copy_ReplacesTheDestination_WithTheSourceBytes()
    {
        using var dir = new TempDirectory();
        var bytes = Enumerable.Range(0, 100_000).Select(i => (byte)(i * 7)).ToArray();
        File.WriteAllBytes(dir.File("source"), bytes);
        AtomicFile.WriteAllText(dir.File("destination"), "stale");
        AtomicFile.Copy(dir.File("source"), dir.File("destination"));
        Assert.Equal(bytes, File.ReadAllBytes(dir.File("destination")));
    }
}
