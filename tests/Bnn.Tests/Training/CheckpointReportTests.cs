using Bnn.Training;

namespace Bnn.Tests.Training;

public sealed class CheckpointReportTests
{
    private static CheckpointHeader Header(int completed, int epochs, bool optimizerState) => new()
    {
        Arch = "cnv", Width = 1, Dataset = "cifar10", Classes = 10, BinaryPadValue = 1, Seed = 11, Epochs = epochs,
        LearningRate = 2e-3, BatchSize = 100, ValidationCount = 5000, CompletedEpochs = completed, BestEpoch = 3,
        BestValidationAccuracy = 0.7984, HasOptimizerState = optimizerState,
        History = Enumerable.Range(1, completed).Select(e => new EpochRecord(
            e, 2.0 - (0.1 * e), 0.5 + (0.05 * e), 1.0 - (0.05 * e), e == 3 ? 0.7984 : 0.7 + (0.01 * e),
            Trainer.CosineLearningRate(2e-3, e - 1, epochs), 100 + e, 110.0 * e, 3000 + (10 * e))).ToList(),
    };

    [Fact]
    public void Describe_NamesTheRunItsPositionAndItsLastEpochs()
    {
        var resumable = Header(completed: 4, epochs: 300, optimizerState: true) with
        {
            Teacher = "/ckpt/teacher.best.ckpt", DistillWeight = 0.5, DistillTemperature = 4, ChannelsLast = true, Bf16BinaryConvs = true,
        };
        var averaged = Header(completed: 4, epochs: 4, optimizerState: false) with
        {
            Float = true, AveragedEpochs = [1, 3, 4], RecalibrationImages = 20000, Augmentation = Augmentation.Flip,
        };
        var snapshot = Header(completed: 4, epochs: 6, optimizerState: false) with { CycleStart = 2, ChannelsLast = false, Bf16BinaryConvs = false };
        var packed = Header(completed: 4, epochs: 100, optimizerState: true) with { Packed = true, ChannelsLast = true, Bf16BinaryConvs = true };
        var fresh = Header(completed: 0, epochs: 10, optimizerState: true) with { BestEpoch = -1, BestValidationAccuracy = double.NegativeInfinity };

        Snapshot.Match(string.Join("---\n",
            new CheckpointReport(resumable).Describe(lastEpochs: 3),
            new CheckpointReport(averaged).Describe(lastEpochs: 0),
            new CheckpointReport(snapshot).Describe(lastEpochs: 1),
            new CheckpointReport(packed).Describe(lastEpochs: 0),
            new CheckpointReport(fresh).Describe(lastEpochs: 5)), "checkpoint_report");
    }

    [Fact]
    public void Rate_KeepsThreeSignificantDigits_AtEveryScale()
    {
        Assert.Equal(["2e-3", "1.22e-3", "4.5e-7", "1e0"], new[] { 2e-3, 1.2235e-3, 4.5e-7, 1.0 }.Select(CheckpointReport.Rate));
    }
}
