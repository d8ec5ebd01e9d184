using Bnn.Data;
using Bnn.Training;

namespace Bnn.Tests.Training;

/// <summary>The augmentation modes against their definitions, and a restarted learning-rate cycle across resumes.</summary>
[Collection("torch")]
public sealed class AugmentationTests
{
    [Fact]
    public void CropFlip_DrawsAsBeforeTheModesExisted()
    {
        // Runs of the same seed must keep drawing the same batches: the shift's two draws, then the flip's.
        var augmenter = Augmenter.For(Augmentation.CropFlip, new Random(9))!;
        var plain = new Random(9);
        for (int i = 0; i < 1000; i++)
        {
            Assert.Equal((plain.Next(-4, 5), plain.Next(-4, 5), plain.Next(2) == 1), augmenter.Next());
        }
    }

    [Fact]
    public void Flip_NeverShifts_AndFlipsAboutHalf_NoneIsNoAugmenter()
    {
        var augmenter = Augmenter.For(Augmentation.Flip, new Random(4))!;
        var draws = Enumerable.Range(0, 2000).Select(_ => augmenter.Next()).ToList();
        Assert.All(draws, d => Assert.Equal((0, 0), (d.Dy, d.Dx)));
        Assert.InRange(draws.Count(d => d.Flip), 900, 1100);
        Assert.Null(Augmenter.For(Augmentation.None, new Random(4)));
    }

    [Fact]
    public void FillBatch_Flip_WritesEachImageOrItsMirror_NeverAGreyBorder()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, 30, seed: 3, learnable: false);
        var images = Datasets.Load("cifar10", dir.Path, "test");
        var indices = Enumerable.Range(0, images.Count).ToArray();
        var plain = new float[images.Count * images.ImageSize];
        var flipped = new float[plain.Length];
        Trainer.FillBatch(images, indices, null, plain, new long[images.Count]);
        Trainer.FillBatch(images, indices, Augmenter.For(Augmentation.Flip, new Random(2)), flipped, new long[images.Count]);

        int mirrored = 0;
        int w = images.Width;
        for (int i = 0; i < images.Count; i++)
        {
            var a = plain.AsSpan(i * images.ImageSize, images.ImageSize);
            var b = flipped.AsSpan(i * images.ImageSize, images.ImageSize);
            bool same = a.SequenceEqual(b);
            bool mirror = true;
            for (int row = 0; row < images.ImageSize / w; row++)
            {
                for (int x = 0; x < w; x++)
                {
                    mirror &= b[(row * w) + x] == a[(row * w) + w - 1 - x];
                }
            }
            Assert.True(same || mirror, $"image {i} is neither itself nor its mirror");
            mirrored += mirror && !same ? 1 : 0;
        }
        Assert.InRange(mirrored, 5, 25);
    }

    [Fact]
    public void RestartLearningRate_StartsANewCosineCycleAtTheResumedEpoch_AndLaterResumesKeepItAndTheAugmentation()
    {
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 27, seed: 3, batches: 1);
        var first = Trainer.Train(options);
        Assert.Equal(Augmentation.CropFlip, Checkpoint.ReadHeader(first.CheckpointPath).TrainingAugmentation);

        // When resuming to 3 epochs with a new cycle at 1e-3, flip-only; then to 4 epochs with neither option
        var restarted = Trainer.Train(options with
        {
            Epochs = 3, Resume = first.CheckpointPath, RestartLearningRate = 1e-3, Augmentation = Augmentation.Flip,
        });
        var continued = Trainer.Train(options with { Epochs = 4, Resume = restarted.CheckpointPath });

        // Then the cycle spans epochs 2-3, and recomputed for 4 epochs it continues from where it began
        var rates = continued.History.Select(h => h.LearningRate).ToArray();
        Assert.Equal(2e-3, rates[0], 12);
        Assert.Equal(1e-3, rates[1], 12);
        Assert.Equal(0.5e-3, rates[2], 12);
        Assert.Equal(0.5e-3 * (1 + Math.Cos(Math.PI * 2 / 3)), rates[3], 12);
        var header = Checkpoint.ReadHeader(continued.CheckpointPath);
        Assert.Equal((1, Augmentation.Flip), (header.CycleStart, header.Augmentation));
    }

    [Fact]
    public void RestartLearningRate_WithoutAResumeEpochsLeftOrAPositiveRate_IsAClearError()
    {
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 27, seed: 3, batches: 1);
        var e = Assert.Throws<BnnDataException>(() => Trainer.Train(options with { RestartLearningRate = 1e-3 }));
        Assert.Contains("resumed run", e.Message);
        var first = Trainer.Train(options);
        e = Assert.Throws<BnnDataException>(() => Trainer.Train(options with { Resume = first.CheckpointPath, RestartLearningRate = 1e-3 }));
        Assert.Contains("completed (1)", e.Message);
        e = Assert.Throws<BnnDataException>(() => Trainer.Train(options with { Epochs = 2, Resume = first.CheckpointPath, RestartLearningRate = 0 }));
        Assert.Contains("learning rate > 0 (0)", e.Message);
    }
}
