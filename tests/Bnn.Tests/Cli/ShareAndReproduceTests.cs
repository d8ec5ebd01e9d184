using System.Text.Json;
using Bnn.Engine;
using Bnn.Model;
using Bnn.Sharing;

namespace Bnn.Tests.Cli;

public sealed class ShareAndReproduceTests
{
    [Theory]
    [InlineData(Planner.Exact)]
    [InlineData(Planner.ExactSimilar)]
    public void Share_LosslessMode_WritesAPlannedModelThatScoresIdentically(string mode)
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 10, seed: 2);
        var model = TestData.SmallModel(4);
        ModelFile.Save(model, dir.File("m.bnn"));
        var (code, output, err) = CliRunner.Run("share", "--model", dir.File("m.bnn"), "--mode", mode, "--data", dir.Path, "--out", dir.File("s.bnn"), "--json", dir.File("s.json"));
        Assert.True(code == 0, err);
        Assert.Contains("0 predictions differ", output);
        var shared = ModelFile.Load(dir.File("s.bnn"));
        Assert.Equal(model.ConvLayers.Count(), shared.Plans.Count);
        Assert.All(shared.Plans.Values, p => Assert.Equal(mode, p.Mode));
        var images = TestData.RandomImages(5, 1);
        Assert.Equal(new PackedEngine(model).Run(images).Scores, new SharedEngine(shared).Run(images).Scores);

        using var json = JsonDocument.Parse(File.ReadAllText(dir.File("s.json")));
        var root = json.RootElement;
        var layer = root.GetProperty("layers")[1];
        foreach (var field in new[] { "name", "K", "C", "kh", "kw", "out_h", "out_w", "baseline_tap_ops", "distinct_classes", "repeated", "inverse", "tap_ops", "conv2d" })
        {
            Assert.True(layer.TryGetProperty(field, out _), field);
        }
        Assert.Equal(JsonValueKind.Null, layer.GetProperty("tap_ops").GetProperty("approximate").ValueKind);
        Assert.True(root.GetProperty("totals").GetProperty("tap_ops").GetProperty("exact_similar").GetInt64() > 0);
        Assert.True(root.GetProperty("accuracy").TryGetProperty("validation_shared", out _));
    }

    [Fact]
    public void Share_Approximate_WithoutData_IsAUsageError()
    {
        using var dir = new TempDirectory();
        ModelFile.Save(TestData.SmallModel(4), dir.File("m.bnn"));
        var (code, _, err) = CliRunner.Run("share", "--model", dir.File("m.bnn"), "--mode", "approximate", "--out", dir.File("s.bnn"));
        Assert.Equal(1, code);
        Assert.Contains("needs --data", err);
    }

    [Fact]
    public void Analyze_SmallModel_MatchesSnapshot()
    {
        using var dir = new TempDirectory();
        ModelFile.Save(TestData.SmallModel(4), dir.File("m.bnn"));
        var (code, output, _) = CliRunner.Run("analyze", "--model", dir.File("m.bnn"));
        Assert.Equal(0, code);
        Snapshot.Match(output, "analyze_small");
    }

    [Fact]
    public void Reproduce_GeneratedData_PrintsTheHeadlineTableWithLosslessModesUnchanged()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 20, seed: 6);
        Directory.CreateDirectory(dir.File("models"));
        ModelFile.Save(SharingModel(), dir.File("models/tiny-cifar10.bnn"));
        var (code, output, err) = CliRunner.Run("reproduce", "--data", dir.Path, "--models", dir.File("models"), "--max-radius", "1", "--out", dir.File("out"),
            "--finetune-epochs", "1");
        Assert.True(code == 0, err);
        Assert.Contains("tiny-cifar10: no sharing-aware fine-tuning: ", err, StringComparison.Ordinal);
        Assert.DoesNotContain("approx+finetune", output, StringComparison.Ordinal);
        Assert.Contains("tiny-cifar10", output);
        Assert.Contains("about 60% fewer", output);
        var lines = output.Split('\n');
        // The last column counts test predictions that changed versus the dense model: none for lossless modes.
        Assert.EndsWith(" 0", lines.Single(l => l.Contains(" exact ", StringComparison.Ordinal)).TrimEnd());
        Assert.EndsWith(" 0", lines.Single(l => l.Contains(" exact-similar ", StringComparison.Ordinal)).TrimEnd());
        Assert.EndsWith(" 0", lines.Single(l => l.Contains(" exact-sim+steiner ", StringComparison.Ordinal)).TrimEnd());
        Assert.True(File.Exists(dir.File("out/tiny-cifar10.approximate.bnn")));
        Assert.True(File.Exists(dir.File("out/tiny-cifar10.exact-sim+steiner.bnn")));
    }

    [Fact]
    public void Reproduce_Only_RunsTheNamedModelAlone()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 20, seed: 6);
        Directory.CreateDirectory(dir.File("models"));
        ModelFile.Save(SharingModel(), dir.File("models/a-cifar10.bnn"));
        ModelFile.Save(SharingModel(), dir.File("models/b-cifar10.bnn"));
        var (code, output, err) = CliRunner.Run("reproduce", "--data", dir.Path, "--models", dir.File("models"), "--only", "b-cifar10",
            "--steiner", "false", "--limit", "20");
        Assert.True(code == 0, err);
        Assert.Contains("b-cifar10", output);
        Assert.DoesNotContain("a-cifar10", output + err);
    }

    [Fact]
    public void Reproduce_OnlyAnUnknownModel_IsAUsageErrorNamingTheModelsThere()
    {
        using var dir = new TempDirectory();
        Directory.CreateDirectory(dir.File("models"));
        ModelFile.Save(SharingModel(), dir.File("models/a-cifar10.bnn"));
        var (code, _, err) = CliRunner.Run("reproduce", "--data", dir.Path, "--models", dir.File("models"), "--only", "cnv-cifar10");
        Assert.Equal(1, code);
        Assert.Contains("no model cnv-cifar10", err);
        Assert.Contains("there: a-cifar10", err);
    }

    [Fact]
    public void Share_FinetuneWithoutCheckpoint_IsAUsageError()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 20, seed: 6);
        ModelFile.Save(SharingModel(), dir.File("m.bnn"));
        var (code, _, err) = CliRunner.Run("share", "--model", dir.File("m.bnn"), "--mode", "approximate", "--data", dir.Path, "--finetune-epochs", "2", "--out", dir.File("s.bnn"));
        Assert.Equal(1, code);
        Assert.Contains("--checkpoint", err);
        Assert.False(File.Exists(dir.File("s.bnn")));
    }

    private static BnnModel SharingModel() => RandomModels.Create(
        [new ConvSpec(6, 3, 1, 0), new ConvSpec(8, 3, 2, 1), new PoolSpec(2), new OutputSpec(10)], new Shape(3, 32, 32), seed: 3);
}

public sealed class ReportTests
{
    [Fact]
    public void Report_GeneratedData_WritesMarkdownAndTwoPngPlots()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 20, seed: 8);
        ModelFile.Save(RandomModels.Create([new ConvSpec(6, 3, 1, 0), new ConvSpec(8, 3, 2, 1), new PoolSpec(2), new OutputSpec(10)], new Shape(3, 32, 32), seed: 5), dir.File("m.bnn"));
        var (code, _, err) = CliRunner.Run("report", "--model", dir.File("m.bnn"), "--data", dir.Path, "--out", dir.File("r"), "--sweep", "0,1");
        Assert.True(code == 0, err);
        var md = File.ReadAllText(dir.File("r/report.md"));
        Assert.Contains("| conv1 |", md);
        Assert.Contains("| exact-similar |", md);
        Assert.Contains("reduction-per-layer.png", md);
        foreach (var png in new[] { "reduction-per-layer.png", "accuracy-vs-reduction.png" })
        {
            var bytes = File.ReadAllBytes(dir.File("r/" + png));
            Assert.True(bytes.Length > 1000);
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, bytes[..4]);
        }
    }
}
