using System.Text.Json;
using Bnn.Engine;
using Bnn.Model;

namespace Bnn.Tests.Cli;

public sealed class EvalAndInfoTests
{
    [Fact]
    public void Eval_GeneratedCifar_WritesJsonWithPredictionsMatchingTheEngine()
    {
        // Given a random CNV-shaped model and a small CIFAR-10 directory
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 20, seed: 3);
        var model = RandomModels.Create(Architectures.Build("cnv", 0.125), new Shape(3, 32, 32), seed: 8);
        ModelFile.Save(model, dir.File("m.bnn"));

        // When evaluating through the CLI
        var (code, output, err) = CliRunner.Run("eval", "--model", dir.File("m.bnn"), "--data", dir.Path, "--json", dir.File("r.json"), "--threads", "2");

        // Then it succeeds and the JSON agrees with a direct engine run
        Assert.True(code == 0, err);
        Assert.Contains("accuracy", output);
        using var json = JsonDocument.Parse(File.ReadAllText(dir.File("r.json")));
        var root = json.RootElement;
        foreach (var field in new[] { "model", "dataset", "split", "images", "correct", "accuracy", "images_per_second", "engine", "predictions" })
        {
            Assert.True(root.TryGetProperty(field, out _), field);
        }
        var test = TestData.RandomImages(20, 3);
        var expected = new PackedEngine(model).Run(test).Predictions;
        Assert.Equal(expected, root.GetProperty("predictions").EnumerateArray().Select(p => p.GetInt32()).ToArray());
        Assert.Equal(expected.Where((p, i) => p == test.Labels[i]).Count(), root.GetProperty("correct").GetInt32());
        Assert.Equal("test", root.GetProperty("split").GetString());
    }

    [Fact]
    public void Eval_ReferenceEngineAndFileOption_AgreeWithFast()
    {
        using var dir = new TempDirectory();
        var images = TestData.RandomImages(6, 4);
        File.WriteAllBytes(dir.File("lossless_test_0-5.bin.gz"), TestData.Gzip(TestData.CifarRecords(images)));
        ModelFile.Save(TestData.SmallModel(2), dir.File("m.bnn"));
        var fast = CliRunner.Run("eval", "--model", dir.File("m.bnn"), "--data", dir.Path, "--file", "lossless_test_0-5.bin.gz", "--json", dir.File("f.json"));
        var reference = CliRunner.Run("eval", "--model", dir.File("m.bnn"), "--data", dir.Path, "--file", "lossless_test_0-5.bin.gz", "--engine", "reference", "--json", dir.File("r.json"));
        Assert.Equal(0, fast.Code);
        Assert.Equal(0, reference.Code);
        static int[] Predictions(string path) =>
            JsonDocument.Parse(File.ReadAllText(path)).RootElement.GetProperty("predictions").EnumerateArray().Select(p => p.GetInt32()).ToArray();
        Assert.Equal(Predictions(dir.File("f.json")), Predictions(dir.File("r.json")));
        Assert.Equal(6, Predictions(dir.File("f.json")).Length);
    }

    [Fact]
    public void Info_SmallModel_MatchesSnapshot()
    {
        using var dir = new TempDirectory();
        ModelFile.Save(RandomModels.Create(Architectures.Build("cnv"), new Shape(3, 32, 32), seed: 1), dir.File("cnv.bnn"));
        var (code, output, _) = CliRunner.Run("info", "--model", dir.File("cnv.bnn"), "--json", dir.File("i.json"));
        Assert.Equal(0, code);
        Snapshot.Match(output, "info_cnv");
        using var json = JsonDocument.Parse(File.ReadAllText(dir.File("i.json")));
        // K·C·kh·kw·Ho·Wo for the second CNV conv: 64·64·9·28·28.
        Assert.Equal(64L * 64 * 9 * 28 * 28, json.RootElement.GetProperty("layers")[1].GetProperty("tap_ops").GetInt64());
    }

    [Fact]
    public void Eval_BadModel_ExitsWith2AndNoStackTrace()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 2, seed: 1);
        File.WriteAllText(dir.File("bad.bnn"), "this is not a model");
        var (code, _, err) = CliRunner.Run("eval", "--model", dir.File("bad.bnn"), "--data", dir.Path);
        Assert.Equal(2, code);
        Assert.Contains("bad.bnn", err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public void Eval_TruncatedData_ExitsWith2NamingTheRecord()
    {
        using var dir = new TempDirectory();
        ModelFile.Save(TestData.SmallModel(2), dir.File("m.bnn"));
        File.WriteAllBytes(dir.File("test_batch.bin"), TestData.CifarRecords(TestData.RandomImages(2, 1))[..5000]);
        var (code, _, err) = CliRunner.Run("eval", "--model", dir.File("m.bnn"), "--data", dir.Path);
        Assert.Equal(2, code);
        Assert.Contains("test_batch.bin: truncated record 1", err);
    }

    [Fact]
    public void Eval_MissingRequiredOption_ExitsWith1()
    {
        var (code, _, err) = CliRunner.Run("eval", "--data", "x");
        Assert.Equal(1, code);
        Assert.Contains("--model", err);
    }

    [Theory]
    [InlineData("--restart-lr", "1e-3", "--restart-lr needs --resume")]
    [InlineData("--augment", "mirror", "'mirror' not recognized")]
    public void Train_RestartWithoutResume_OrUnknownAugmentation_IsAUsageErrorBeforeLoadingData(string option, string value, string message)
    {
        var (code, _, err) = CliRunner.Run("train", "--arch", "cnv", "--dataset", "cifar10", "--data", "/nonexistent", "--epochs", "1",
            "--out", "/nonexistent/m.bnn", option, value);
        Assert.Equal(1, code);
        Assert.Contains(message, err);
    }

    [Theory]
    [InlineData(0, 0, 5, 7, "00:05:07")]
    [InlineData(0, 23, 59, 59, "23:59:59")]
    [InlineData(1, 5, 3, 0, "29:03:00")]
    [InlineData(3, 0, 0, 1, "72:00:01")]
    public void Train_EpochLine_GivesTheEtaInWholeHours_AlsoPastADay(int days, int hours, int minutes, int seconds, string eta)
    {
        var line = Bnn.Cli.TrainCommand.LogLine(new Bnn.Training.TrainProgress(23, 300, 450, 450, 1.87799, 0.7152, new TimeSpan(days, hours, minutes, seconds)));
        Assert.Equal($"epoch 23/300: loss 1.8780 train acc 71.52 % eta {eta}", line);
    }

    [Theory]
    [InlineData(450, new[] { 45, 90, 135, 180, 225, 270, 315, 360, 405, 450 })]
    [InlineData(25, new[] { 3, 5, 8, 10, 13, 15, 18, 20, 23, 25 })]
    [InlineData(10, new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 })]
    [InlineData(9, new[] { 9 })]
    [InlineData(1, new[] { 1 })]
    public void Train_LogLines_ComeAtEachTenthOfAnEpochOf10BatchesOrMore_AndAtItsEnd(int batches, int[] logged)
    {
        var lines = Enumerable.Range(1, batches)
            .Select(b => (b, line: Bnn.Cli.TrainCommand.LogLine(new Bnn.Training.TrainProgress(2, 40, b, batches, 1.5, 0.5, TimeSpan.FromMinutes(90)))))
            .Where(x => x.line is not null).ToList();
        Assert.Equal(logged, lines.Select(x => x.b));
        Assert.All(lines[..^1], x => Assert.StartsWith($"epoch 2/40, batch {x.b}/{batches}: loss 1.5000", x.line, StringComparison.Ordinal));
        Assert.Equal("epoch 2/40: loss 1.5000 train acc 50.00 % eta 01:30:00", lines[^1].line);
    }

    [Fact]
    public void Train_SetupLine_NamesWhatTheRunWillDo_WithTheResumedChoices()
    {
        var fresh = new Bnn.Training.TrainSetup("cnv", 1, false, "cifar10", 45000, 5000, 100, 0, 300, 2e-3, 0,
            Bnn.Training.Augmentation.CropFlip, true, true, [], null, null, false);
        Assert.Equal(
            "cnv ×1 on cifar10: 45,000 training and 5,000 validation images, batch 100; epochs 1-300, learning rate 2e-3 " +
            "cosine-annealed over epochs 1-300; augmentation crop-flip; channels-last, binary convs in bfloat16",
            fresh.Describe());

        var resumed = fresh with
        {
            Width = 0.5, CompletedEpochs = 82, CycleStart = 80, LearningRate = 1e-4, Augmentation = Bnn.Training.Augmentation.Flip,
            ChannelsLast = false, Bf16BinaryConvs = false, Teachers = ["/ckpt/teacher.best.ckpt"], DistillWeight = 0.5, DistillTemperature = 4,
        };
        Assert.Equal(
            "cnv ×0.5 on cifar10: 45,000 training and 5,000 validation images, batch 100; epochs 83-300, learning rate 1e-4 " +
            "cosine-annealed over epochs 81-300; augmentation flip; contiguous, binary convs in float32; distilling from " +
            "/ckpt/teacher.best.ckpt (α 0.5, T 4), teacher in float32",
            resumed.Describe());
        Assert.EndsWith("(α 0.5, T 4), teacher in bfloat16", (resumed with { TeacherInBf16 = true }).Describe(), StringComparison.Ordinal);
        Assert.EndsWith(
            "distilling from /ckpt/a.ckpt (validation 88.22 %), /ckpt/b.ckpt (validation 87.12 %) and /ckpt/c.ckpt (validation 80.00 %), " +
            "their mean 89.60 % (α 0.5, T 4), teachers in float32",
            (resumed with { Teachers = ["/ckpt/a.ckpt", "/ckpt/b.ckpt", "/ckpt/c.ckpt"], TeacherAccuracy = new([0.8822, 0.8712, 0.8], 0.896) }).Describe(),
            StringComparison.Ordinal);
        Assert.StartsWith("cnv ×1 (float twin) on cifar10: 45,000 training and 5,000 validation images, batch 100; all 300 epochs done,",
            (fresh with { Float = true, CompletedEpochs = 300 }).Describe(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("eval")]
    [InlineData("info")]
    [InlineData("train")]
    [InlineData("download")]
    [InlineData("random-model")]
    [InlineData("checkpoint-info")]
    public void Help_EveryCommand_PrintsUsage(string command)
    {
        var (code, output, _) = CliRunner.Run(command, "--help");
        Assert.Equal(0, code);
        Assert.Contains("Usage:", output);
        Assert.Contains(command, output);
    }
}
