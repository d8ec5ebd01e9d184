using System.IO.Compression;
using Bnn.Data;
using Bnn.Model;

namespace Bnn.Tests;

/// <summary>Seeded generators for images and record files, shared by the tests.</summary>
internal static class TestData
{
    public static ImageSet RandomImages(int count, int seed, int channels = 3, int height = 32, int width = 32, int classes = 10)
    {
        var rng = new Random(seed);
        var pixels = new byte[count * channels * height * width];
        rng.NextBytes(pixels);
        var labels = new byte[count];
        for (int i = 0; i < count; i++)
        {
            labels[i] = (byte)rng.Next(classes);
        }
        return new ImageSet(pixels, labels, channels, height, width, classes);
    }

    /// <summary>Images that a model can learn: the label decides a coarse brightness pattern, plus noise.</summary>
    public static ImageSet LearnableImages(int count, int seed)
    {
        var rng = new Random(seed);
        var pixels = new byte[count * 3072];
        var labels = new byte[count];
        for (int i = 0; i < count; i++)
        {
            int label = rng.Next(10);
            labels[i] = (byte)label;
            for (int c = 0; c < 3; c++)
            {
                for (int y = 0; y < 32; y++)
                {
                    for (int x = 0; x < 32; x++)
                    {
                        int quadrant = ((y / 16) * 2) + (x / 16);
                        int bright = ((label + quadrant + c) % 3) * 100;
                        pixels[(i * 3072) + (c * 1024) + (y * 32) + x] = (byte)Math.Clamp(bright + rng.Next(-30, 31), 0, 255);
                    }
                }
            }
        }
        return new ImageSet(pixels, labels, 3, 32, 32, 10);
    }

    /// <summary>CIFAR-10 binary records for a set (label byte then R, G, B planes).</summary>
    public static byte[] CifarRecords(ImageSet set)
    {
        var bytes = new byte[set.Count * Cifar10.RecordSize];
        for (int i = 0; i < set.Count; i++)
        {
            bytes[i * Cifar10.RecordSize] = set.Labels[i];
            set.Image(i).CopyTo(bytes.AsSpan((i * Cifar10.RecordSize) + 1));
        }
        return bytes;
    }

    public static byte[] Gzip(byte[] data)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest))
        {
            gz.Write(data);
        }
        return ms.ToArray();
    }

    /// <summary>Writes a small CIFAR-10 directory: train batches and a test batch, gzipped.</summary>
    public static string WriteCifarDirectory(TempDirectory dir, int perBatch, int seed, bool learnable = false)
    {
        for (int b = 1; b <= 5; b++)
        {
            var set = learnable ? LearnableImages(perBatch, seed + b) : RandomImages(perBatch, seed + b);
            File.WriteAllBytes(Path.Combine(dir.Path, $"data_batch_{b}.bin.gz"), Gzip(CifarRecords(set)));
        }
        var test = learnable ? LearnableImages(perBatch, seed) : RandomImages(perBatch, seed);
        File.WriteAllBytes(Path.Combine(dir.Path, "test_batch.bin"), CifarRecords(test));
        return dir.Path;
    }

    public static BnnModel SmallModel(int seed, int padValue = 1) => RandomModels.Create(
        [new ConvSpec(8, 3, 1, 1), new ConvSpec(16, 3, 2, 1), new PoolSpec(2), new ConvSpec(12, 3, 1, 0), new DenseSpec(20), new OutputSpec(10)],
        new Shape(3, 32, 32), seed, padValue);
}

/// <summary>A temporary directory removed on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "bnn-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
