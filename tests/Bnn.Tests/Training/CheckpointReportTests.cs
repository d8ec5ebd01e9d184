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
    public void Teachers_AreReadFromTheOldSingleTeacherField_AndWrittenOnlyAsAList()
    {
        // Given a header as checkpoints wrote it before ensembles, and one with two teachers
        var old = Header(completed: 1, epochs: 2, optimizerState: false) with { Teacher = "/ckpt/teacher.best.ckpt" };
        var ensemble = Header(completed: 1, epochs: 2, optimizerState: false) with
        {
            Teachers = ["/ckpt/a.ckpt", "/ckpt/b.ckpt"], DistillWeight = 0.5, DistillTemperature = 4,
        };

        // When each goes through a checkpoint's header bytes
        var oldBack = RoundTrip(old, out _);
        var ensembleBack = RoundTrip(ensemble, out var json);

        // Then both name their teachers, the new one writes the list alone, and the report names every teacher
        Assert.Equal(["/ckpt/teacher.best.ckpt"], oldBack.TeacherPaths);
        Assert.Equal(["/ckpt/a.ckpt", "/ckpt/b.ckpt"], ensembleBack.TeacherPaths);
        Assert.DoesNotContain("\"Teacher\"", json, StringComparison.Ordinal);
        Assert.DoesNotContain("TeacherPaths", json, StringComparison.Ordinal);
        Assert.Empty(Header(completed: 1, epochs: 2, optimizerState: false).TeacherPaths);
        Assert.Contains("; distilling from /ckpt/a.ckpt and /ckpt/b.ckpt (α 0.5, T 4)", new CheckpointReport(ensembleBack).Describe(lastEpochs: 0),
            StringComparison.Ordinal);
    }

    private static CheckpointHeader RoundTrip(CheckpointHeader header, out string json)
    {
        using var stream = new MemoryStream();
        using (var writer = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            Checkpoint.WriteHeader(writer, header, pack: false);
        }
        json = System.Text.Encoding.UTF8.GetString(stream.ToArray());
        stream.Position = 0;
        using var reader = new BinaryReader(stream);
        return Checkpoint.ReadHeader(reader, "header", pack: false);
    }

    [Fact]
    public void Rate_KeepsThreeSignificantDigits_AtEveryScale()
    {
        Assert.Equal(["2e-3", "1.22e-3", "4.5e-7", "1e0"], new[] { 2e-3, 1.2235e-3, 4.5e-7, 1.0 }.Select(CheckpointReport.Rate));
    }
}
