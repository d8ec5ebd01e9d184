using Bnn.Data;
using Bnn.Model;
using Bnn.Tests.Cli;
using Bnn.Training;
using static TorchSharp.torch;

namespace Bnn.Tests.Training;

/// <summary>Weight averaging over kept epochs and batch-norm re-estimation, against their definitions.</summary>
[Collection("torch")]
public sealed class WeightAveragingTests
{
    [Fact]
    public void Average_OfKeptEpochs_IsTheMeanOfTheirWeights_AndTheEngineStillMatchesTorch()
    {
        // Given a two-epoch run that keeps each epoch's weights
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 31, seed: 7, batches: 4) with { Epochs = 2, KeepEpochCheckpoints = true };
        Trainer.Train(options);
        string[] kept = [Trainer.EpochCheckpointPath(options.Out, 1), Trainer.EpochCheckpointPath(options.Out, 2)];
        Assert.All(kept, p => Assert.True(File.Exists(p), p));

        // When averaging them without recalibration
        var result = WeightAveraging.Average(kept, dir.Path, dir.File("avg.ckpt"), recalibrationImages: 0);

        // Then every parameter and batch-norm statistic is the mean of the two epochs'
        using var scope = NewDisposeScope();
        using var a = Exporter.LoadNetwork(kept[0]);
        using var b = Exporter.LoadNetwork(kept[1]);
        using var averaged = Exporter.LoadNetwork(result.CheckpointPath);
        var stateA = a.state_dict();
        var stateB = b.state_dict();
        int compared = 0;
        foreach (var (name, value) in averaged.state_dict().Where(kv => kv.Value.is_floating_point()))
        {
            Assert.True(value.allclose(stateA[name].add(stateB[name]).div(2), rtol: 1e-6, atol: 1e-7), name);
            compared++;
        }
        Assert.True(compared >= 20, $"only {compared} tensors compared");
        // (the epochs differ, so the mean is not trivially either one)
        var firstWeight = stateA.Keys.First(k => k.EndsWith("weight", StringComparison.Ordinal));
        Assert.False(stateA[firstWeight].eq(stateB[firstWeight]).all().item<bool>());
        Assert.Equal([1, 2], Checkpoint.ReadHeader(result.CheckpointPath).AveragedEpochs);
        Assert.Null(result.RecalibratedValidationAccuracy);
        Assert.Equal(2, result.Inputs.Count);

        // And the exported average is reproduced exactly by the engine
        var test = Datasets.Load("cifar10", dir.Path, "test");
        TrainingTests.AssertEngineMatchesTorch(averaged, Exporter.ToModel(averaged, "avg"), test);
    }

    [Fact]
    public void Recalibrate_SetsTheFirstNormsRunningMeanToTheMeanOverAllImages()
    {
        // Given a briefly trained network and 150 training images (one and a half batches: tests the weighting)
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 33, seed: 8, batches: 3);
        var trained = Trainer.Train(options);
        using var net = Exporter.LoadNetwork(trained.CheckpointPath);
        var images = Datasets.Load("cifar10", dir.Path, "train").Take(150);

        // When re-estimating batch norm on all of them, without augmentation
        WeightAveraging.Recalibrate(net, images, images.Count, Augmentation.None, seed: 1);

        // Then the first conv's running mean is the mean of its pre-norm output over every image and position
        using var scope = NewDisposeScope();
        var stage = (BinaryNetwork.ConvStage)net.Stages[0];
        var input = new float[images.Count * images.ImageSize];
        Trainer.FillBatch(images, Enumerable.Range(0, images.Count).ToArray(), null, input, new long[images.Count]);
        var x = tensor(input, [images.Count, images.Channels, images.Height, images.Width]);
        var pre = BinaryNetwork.ConvStage.Convolve(x, SteSign.Binarize(stage.Weight), 1, stage.Spec.Padding, inBf16: false);
        var expected = pre.mean([0, 2, 3]);
        Assert.True(stage.Norm.running_mean!.allclose(expected, rtol: 1e-4, atol: 1e-3),
            $"running mean {stage.Norm.running_mean![0].item<float>()} against {expected[0].item<float>()}");
        Assert.False(net.training);
    }

    [Fact]
    public void Average_RefusesCheckpointsOfDifferentRuns()
    {
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 35, seed: 9, batches: 1);
        var narrow = Trainer.Train(options);
        var wide = Trainer.Train(options with { Width = 0.25, Out = dir.File("wide.bnn") });

        var error = Assert.Throws<BnnDataException>(() =>
            WeightAveraging.Average([narrow.CheckpointPath, wide.CheckpointPath], dir.Path, dir.File("avg.ckpt"), 0));
        Assert.Contains("not from the same run", error.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(dir.File("avg.ckpt")));
    }

    [Fact]
    public void AverageCommand_ReportsValidation_WritesCheckpointAndModel_AndRefusesToOverwriteAnInput()
    {
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 37, seed: 10, batches: 2) with { Epochs = 2, KeepEpochCheckpoints = true };
        Trainer.Train(options);
        var first = Trainer.EpochCheckpointPath(options.Out, 1);
        var second = Trainer.EpochCheckpointPath(options.Out, 2);

        var (code, output, error) = CliRunner.Run("average", first, second, "--data", dir.Path, "--out", dir.File("avg.ckpt"),
            "--model", dir.File("avg.bnn"), "--recalibrate", "50", "--threads", "1");
        Assert.True(code == 0, error);
        Assert.Contains("epoch 1: validation", output, StringComparison.Ordinal);
        Assert.Contains("average of 2, batch norm re-estimated on 50 training images: validation", output, StringComparison.Ordinal);
        Assert.Equal(50, Checkpoint.ReadHeader(dir.File("avg.ckpt")).RecalibrationImages);
        Assert.Equal(ModelFile.Load(dir.File("avg.bnn")).Layers.Count, Exporter.FromCheckpoint(dir.File("avg.ckpt")).Layers.Count);

        long before = new FileInfo(second).Length;
        var (refused, _, message) = CliRunner.Run("average", first, second, "--data", dir.Path, "--out", second);
        Assert.NotEqual(0, refused);
        Assert.Contains("would overwrite", message, StringComparison.Ordinal);
        Assert.Equal(before, new FileInfo(second).Length);
    }
}
