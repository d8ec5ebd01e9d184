using System.Formats.Tar;
using System.IO.Compression;
using Bnn.Data;

namespace Bnn.Tests.Data;

public sealed class DatasetTests
{
    [Fact]
    public void Cifar_PlainAndGzip_RoundTripRecords()
    {
        using var dir = new TempDirectory();
        var set = TestData.RandomImages(7, seed: 1);
        File.WriteAllBytes(dir.File("a.bin"), TestData.CifarRecords(set));
        File.WriteAllBytes(dir.File("a.bin.gz"), TestData.Gzip(TestData.CifarRecords(set)));
        foreach (var name in new[] { "a.bin", "a.bin.gz" })
        {
            var loaded = Cifar10.LoadFile(dir.File(name));
            Assert.Equal(set.Labels, loaded.Labels);
            Assert.Equal(set.Pixels, loaded.Pixels);
        }
    }

    [Fact]
    public void Cifar_TrainSplit_ConcatenatesBatchesInOrder()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 3, seed: 10);
        var train = Datasets.Load("cifar10", dir.Path, "train");
        Assert.Equal(15, train.Count);
        Assert.Equal(TestData.RandomImages(3, 11).Labels, train.Labels[..3]);
        Assert.Equal(TestData.RandomImages(3, 15).Pixels, train.Slice(12, 3).Pixels);
    }

    [Fact]
    public void Cifar_OfficialTarGz_IsReadDirectly()
    {
        using var dir = new TempDirectory();
        var test = TestData.RandomImages(4, seed: 3);
        using (var file = File.Create(dir.File("cifar-10-binary.tar.gz")))
        using (var gz = new GZipStream(file, CompressionLevel.Fastest))
        using (var tar = new TarWriter(gz))
        {
            var entry = new PaxTarEntry(TarEntryType.RegularFile, "cifar-10-batches-bin/test_batch.bin")
            {
                DataStream = new MemoryStream(TestData.CifarRecords(test)),
            };
            tar.WriteEntry(entry);
        }
        var loaded = Datasets.Load("cifar10", dir.Path, "test");
        Assert.Equal(test.Pixels, loaded.Pixels);
    }

    [Fact]
    public void Cifar_TruncatedRecord_NamesFileRecordAndOffset()
    {
        using var dir = new TempDirectory();
        var bytes = TestData.CifarRecords(TestData.RandomImages(3, 1));
        File.WriteAllBytes(dir.File("t.bin"), bytes[..^10]);
        var e = Assert.Throws<BnnDataException>(() => Cifar10.LoadFile(dir.File("t.bin")));
        Assert.Contains("t.bin", e.Message);
        Assert.Contains("truncated record 2", e.Message);
        Assert.Contains($"offset {2 * Cifar10.RecordSize}", e.Message);
    }

    [Fact]
    public void Cifar_LabelOutOfRange_NamesRecordAndOffset()
    {
        using var dir = new TempDirectory();
        var bytes = TestData.CifarRecords(TestData.RandomImages(3, 1));
        bytes[Cifar10.RecordSize] = 10;
        File.WriteAllBytes(dir.File("l.bin"), bytes);
        var e = Assert.Throws<BnnDataException>(() => Cifar10.LoadFile(dir.File("l.bin")));
        Assert.Contains("record 1 at byte offset 3073 has label 10", e.Message);
    }

    [Fact]
    public void Cifar_MissingFiles_SaysWhatWasLookedFor()
    {
        using var dir = new TempDirectory();
        var e = Assert.Throws<BnnDataException>(() => Datasets.Load("cifar10", dir.Path, "test"));
        Assert.Contains("test_batch.bin", e.Message);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Svhn_Mat_ReadsImagesAndMapsLabel10ToZero(bool compressed)
    {
        using var dir = new TempDirectory();
        var set = TestData.RandomImages(5, seed: 4);
        set.Labels[0] = 0;
        File.WriteAllBytes(dir.File("test_32x32.mat"), MatWriter.Svhn(set, compressed));
        var loaded = Datasets.Load("svhn", dir.Path, "test");
        Assert.Equal(set.Labels, loaded.Labels);
        Assert.Equal(set.Pixels, loaded.Pixels);
    }

    [Fact]
    public void Svhn_WrongVariable_IsAClearError()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("train_32x32.mat"), MatWriter.Svhn(TestData.RandomImages(2, 1), compress: true, xName: "images"));
        var e = Assert.Throws<BnnDataException>(() => Datasets.Load("svhn", dir.Path, "train"));
        Assert.Contains("no variable 'X'", e.Message);
        Assert.Contains("train_32x32.mat", e.Message);
    }

    [Fact]
    public void Svhn_UnsupportedClass_IsAClearError()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("test_32x32.mat"), MatWriter.Svhn(TestData.RandomImages(2, 1), compress: false, xClass: MatWriter.ClassChar));
        var e = Assert.Throws<BnnDataException>(() => Datasets.Load("svhn", dir.Path, "test"));
        Assert.Contains("unsupported class char", e.Message);
    }

    [Fact]
    public void Svhn_LabelOutOfRange_NamesTheElement()
    {
        using var dir = new TempDirectory();
        var bytes = MatWriter.Write(
        [
            new MatWriter.Variable("X", MatWriter.ClassUInt8, [32, 32, 3, 2], MatWriter.MiUInt8, new byte[2 * 3072]),
            new MatWriter.Variable("y", MatWriter.ClassDouble, [2, 1], MatWriter.MiDouble, [.. BitConverter.GetBytes(3.0), .. BitConverter.GetBytes(11.0)]),
        ], compress: false);
        File.WriteAllBytes(dir.File("test_32x32.mat"), bytes);
        var e = Assert.Throws<BnnDataException>(() => Datasets.Load("svhn", dir.Path, "test"));
        Assert.Contains("element 1 is 11", e.Message);
    }

    [Fact]
    public void Svhn_TruncatedFile_IsAClearError()
    {
        using var dir = new TempDirectory();
        var bytes = MatWriter.Svhn(TestData.RandomImages(3, 1), compress: false);
        File.WriteAllBytes(dir.File("test_32x32.mat"), bytes[..(bytes.Length / 2)]);
        var e = Assert.Throws<BnnDataException>(() => Datasets.Load("svhn", dir.Path, "test"));
        Assert.Contains("truncated", e.Message);
        Assert.Contains("byte offset", e.Message);
    }
}
