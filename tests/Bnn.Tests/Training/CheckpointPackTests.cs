using Bnn.Data;
using Bnn.Model;
using Bnn.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Bnn.Tests.Training;

public sealed class CheckpointPackTests
{
    private const double HalfStep = 1.0 / 65534;

    [Fact]
    public void Encode_KeepsEverySign_AndRoundsWithinHalfAStep()
    {
        var rng = new Random(5);
        var values = new List<float> { -1f, 1f, 0f, -0f, 1e-7f, -1e-7f, float.Epsilon, -float.Epsilon, (float)HalfStep, -(float)HalfStep, 0.99999f, -0.99999f };
        values.AddRange(Enumerable.Range(-1000, 2001).Select(k => k / 1000f));
        values.AddRange(Enumerable.Range(0, 5000).Select(_ => (float)((rng.NextDouble() * 2) - 1)));
        foreach (var w in values)
        {
            float back = CheckpointPack.Decode(CheckpointPack.Encode(w));
            // sign(0) = +1: a weight keeps its sign when back >= 0 exactly where w >= 0.
            Assert.True(back >= 0 == w >= 0, $"{w} came back as {back}");
            double bound = w < 0 && w > -HalfStep ? 2 * HalfStep : HalfStep;
            Assert.True(Math.Abs(back - w) <= bound * (1 + 1e-6), $"{w} came back as {back}");
        }
        Assert.Throws<BnnDataException>(() => CheckpointPack.Encode(1.01f));
        Assert.Throws<BnnDataException>(() => CheckpointPack.Encode(float.NaN));
    }

    [Theory]
    [InlineData(2, 3)] // the best is an earlier epoch: the pack holds both
    [InlineData(3, 3)] // the best is the latest epoch: stored once
    [InlineData(0, 3)] // no best epoch
    public void Pack_KeepsTheRunsExports_AndEveryTensorWithinTheFixedPointStep(int bestEpoch, int completed)
    {
        using var dir = new TempDirectory();
        var latestPath = dir.File("run.ckpt");
        var bestPath = dir.File("run.best.ckpt");
        using var latest = RandomNetwork(seed: 1);
        using var best = RandomNetwork(seed: 2);
        Checkpoint.Write(latestPath, Header(completed, bestEpoch), latest, null);
        if (bestEpoch > 0)
        {
            Checkpoint.Write(bestPath, Header(bestEpoch, bestEpoch), bestEpoch == completed ? latest : best, null);
        }

        var result = CheckpointPack.Pack(latestPath, dir.File("run.pack"));
        Assert.Equal((completed, bestEpoch), (result.CompletedEpochs, result.BestEpoch));
        Assert.Equal(new FileInfo(dir.File("run.pack")).Length, result.PackBytes);

        var header = Checkpoint.ReadHeader(result.PackPath);
        // A checkpoint without Adam's state makes a pack without it.
        Assert.Equal((true, false, completed, bestEpoch), (header.Packed, header.HasOptimizerState, header.CompletedEpochs, header.BestEpoch));
        using (var unpacked = Exporter.LoadNetwork(result.PackPath))
        {
            AssertSameWithinFixedPoint(latest, unpacked);
        }
        Assert.Equal(ModelBytes(latestPath, dir), ModelBytes(result.PackPath, dir));

        var extracted = dir.File("out/run.best.ckpt");
        Assert.Equal(bestEpoch > 0, CheckpointPack.ExtractBest(result.PackPath, extracted));
        if (bestEpoch > 0)
        {
            Assert.Equal((bestEpoch, false), (Checkpoint.ReadHeader(extracted).CompletedEpochs, Checkpoint.ReadHeader(extracted).Packed));
            using var unpackedBest = Exporter.LoadNetwork(extracted);
            AssertSameWithinFixedPoint(bestEpoch == completed ? latest : best, unpackedBest);
            Assert.Equal(ModelBytes(bestPath, dir), ModelBytes(extracted, dir));
        }
    }

    [Fact]
    public void Pack_IsUnderHalfTheCheckpointPair_WhenTheBestIsItsOwnEpoch()
    {
        using var dir = new TempDirectory();
        using var latest = RandomNetwork(seed: 3);
        using var best = RandomNetwork(seed: 4);
        Checkpoint.Write(dir.File("run.ckpt"), Header(3, 2), latest, optim.Adam(latest.parameters()));
        Checkpoint.Write(dir.File("run.best.ckpt"), Header(2, 2), best, null);
        var result = CheckpointPack.Pack(dir.File("run.ckpt"), dir.File("run.pack"));
        // Adam's moments (empty before a step, so not counted here) would make the input larger still.
        Assert.InRange(result.PackBytes, 1, result.InputBytes / 2);
    }

    [Fact]
    public void Pack_RefusesAMissingBest_ItsOwnInput_AndAPack_AndATruncatedPackIsAClearError()
    {
        using var dir = new TempDirectory();
        using var net = RandomNetwork(seed: 6);
        var latestPath = dir.File("run.ckpt");
        Checkpoint.Write(latestPath, Header(3, 2), net, null);
        var e = Assert.Throws<BnnDataException>(() => CheckpointPack.Pack(latestPath, dir.File("run.pack")));
        Assert.Contains("best epoch (2) is not in", e.Message, StringComparison.Ordinal);

        Checkpoint.Write(dir.File("run.best.ckpt"), Header(2, 2), net, null);
        long before = new FileInfo(latestPath).Length;
        e = Assert.Throws<BnnDataException>(() => CheckpointPack.Pack(latestPath, latestPath));
        Assert.Contains("would overwrite", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, new FileInfo(latestPath).Length);

        var pack = CheckpointPack.Pack(latestPath, dir.File("run.pack")).PackPath;
        Assert.Contains("a pack already", Assert.Throws<BnnDataException>(() => CheckpointPack.Pack(pack, dir.File("again.pack"))).Message, StringComparison.Ordinal);

        var bytes = File.ReadAllBytes(pack);
        File.WriteAllBytes(dir.File("cut.pack"), bytes[..(bytes.Length / 2)]);
        using var target = RandomNetwork(seed: 7);
        e = Assert.Throws<BnnDataException>(() => Checkpoint.ReadState(dir.File("cut.pack"), target, null));
        Assert.Contains("truncated or corrupt pack", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LatentNames_AreExactlyTheClippedBinaryWeights()
    {
        using var net = RandomNetwork(seed: 8);
        var expected = net.named_parameters()
            .Where(p => net.Stages.OfType<BinaryNetwork.IBinaryWeights>().Any(s => ReferenceEquals(s.Weight, p.parameter)))
            .Select(p => p.name).Order().ToList();
        Assert.Equal(6 + 3, expected.Count);
        Assert.Equal(expected, CheckpointPack.LatentNames(net).Order().ToList());
        using var twin = new BinaryNetwork(Architectures.Build("cnv", 0.125, 10), binarized: false);
        Assert.Empty(CheckpointPack.LatentNames(twin));
    }

    [Fact]
    public void EncodeMoment_ComesBackWithinAnEighthOfAnOctave_AndZeroStaysZero()
    {
        const float top = 3e-4f;
        Assert.Equal(0, CheckpointPack.EncodeMoment(0, top));
        Assert.Equal(0f, CheckpointPack.DecodeMoment(0, top));
        Assert.Equal(top, CheckpointPack.DecodeMoment(CheckpointPack.EncodeMoment(top, top), top));
        double bound = Math.Pow(2, 1.0 / 8) * (1 + 1e-6);
        for (double octaves = 0; octaves <= 63.5; octaves += 0.01)
        {
            float v = (float)(top * Math.Pow(2, -octaves));
            float back = CheckpointPack.DecodeMoment(CheckpointPack.EncodeMoment(v, top), top);
            Assert.InRange(back / v, 1 / bound, bound);
        }
        // More than 63.5 octaves below the largest, a moment is as good as zero next to Adam's ε of 1e-8.
        Assert.Equal(0, CheckpointPack.EncodeMoment((float)(top * Math.Pow(2, -64)), top));
    }

    [Fact]
    public void Pack_KeepsAdamsStepsAndSecondMoments_AndZeroesItsFirstMoments()
    {
        using var dir = new TempDirectory();
        using var net = RandomNetwork(seed: 10);
        var train = Datasets.Load("cifar10", TestData.WriteCifarDirectory(dir, 40, seed: 12, learnable: true), "train");
        var optimizer = optim.Adam(net.parameters(), 1e-3);
        Trainer.TrainEpoch(net, optimizer, train, 20, 3, null, new Random(1), null, null, null);
        Checkpoint.Write(dir.File("run.ckpt"), Header(3, 3), net, optimizer);
        Checkpoint.Write(dir.File("run.best.ckpt"), Header(3, 3), net, null);
        var pack = CheckpointPack.Pack(dir.File("run.ckpt"), dir.File("run.pack")).PackPath;
        Assert.True(Checkpoint.ReadHeader(pack).HasOptimizerState);

        using var resumed = Checkpoint.NetworkFor(Checkpoint.ReadHeader(pack));
        var resumedOptimizer = optim.Adam(resumed.parameters(), 1e-3);
        Checkpoint.ReadState(pack, resumed, resumedOptimizer);
        var before = optimizer.state_dict().State.Cast<TorchSharp.Modules.Adam.State>().ToList();
        var after = resumedOptimizer.state_dict().State.Cast<TorchSharp.Modules.Adam.State>().ToList();
        Assert.Equal(before.Count, after.Count);
        double bound = Math.Pow(2, 1.0 / 8) * (1 + 1e-6);
        for (int i = 0; i < before.Count; i++)
        {
            Assert.Equal((3L, 3L), (before[i].step, after[i].step));
            Assert.Equal(0, after[i].exp_avg.abs().max().item<float>());
            var v = before[i].exp_avg_sq.data<float>().ToArray();
            var back = after[i].exp_avg_sq.data<float>().ToArray();
            Assert.True(v.Any(x => x > 0), $"parameter {i} had no gradient");
            for (int j = 0; j < v.Length; j++)
            {
                Assert.True(v[j] == 0 ? back[j] == 0 : back[j] / v[j] <= bound && v[j] / back[j] <= bound, $"parameter {i}[{j}]: {v[j]} came back as {back[j]}");
            }
        }
        // The states' tensors belong to the optimizers: collected early, they dispose them while the loop above reads
        // them ("Tensor invalid -- empty handle", seen once in about five CI runs).
        GC.KeepAlive(optimizer);
        GC.KeepAlive(resumedOptimizer);
    }

    [Fact]
    public void TrainResume_FromAPack_ContinuesTheRun_WithItsBestEpoch()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, 100, seed: 43, learnable: true);
        string[] common = ["--data", dir.Path, "--batch", "20", "--max-batches", "2", "--bf16-convs", "false"];
        var (code, _, error) = Cli.CliRunner.Run(
            ["train", "--arch", "cnv", "--width", "0.125", "--dataset", "cifar10", "--epochs", "2", "--out", dir.File("a/m.bnn"), .. common]);
        Assert.True(code == 0, error);

        (code, var output, error) = Cli.CliRunner.Run("checkpoint-pack", "--checkpoint", dir.File("a/m.ckpt"), "--out", dir.File("m.pack"));
        Assert.True(code == 0, error);
        Assert.Matches(@"^wrote .*m\.pack: epoch 2, best epoch [12]; \d+\.\d MB from \d+\.\d MB\n$", output);
        (code, output, error) = Cli.CliRunner.Run("checkpoint-info", "--checkpoint", dir.File("m.pack"));
        Assert.True(code == 0, error);
        Assert.Contains("a pack (latent weights in 16-bit fixed point, Adam's second moments in 8 bits) carrying best epoch", output, StringComparison.Ordinal);

        (code, output, error) = Cli.CliRunner.Run(
            ["train", "--arch", "cnv", "--dataset", "cifar10", "--epochs", "3", "--resume", dir.File("m.pack"), "--out", dir.File("b/m.bnn"), .. common]);
        Assert.True(code == 0, error);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.EndsWith("; Adam resumes with the pack's second moments, its first moments from zero", lines[1], StringComparison.Ordinal);
        Assert.StartsWith("epoch 3/3: loss ", lines[2], StringComparison.Ordinal);

        var before = Checkpoint.ReadHeader(dir.File("a/m.ckpt"));
        var after = Checkpoint.ReadHeader(dir.File("b/m.ckpt"));
        Assert.Equal((3, true, false), (after.CompletedEpochs, after.HasOptimizerState, after.Packed));
        Assert.Equal(before.History, after.History.Take(2));
        // The best epoch came out of the pack, so the run exports a model even if epoch 3 is not better.
        Assert.True(File.Exists(dir.File("b/m.best.ckpt")));
        Assert.Equal(after.BestEpoch, Checkpoint.ReadHeader(dir.File("b/m.best.ckpt")).CompletedEpochs);
        Assert.True(File.Exists(dir.File("b/m.bnn")));
    }

    [Fact]
    public void Reproduce_FineTunesAShippedModel_FromAPackOfItsBestEpoch()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, 100, seed: 47, learnable: true);
        var (code, _, error) = Cli.CliRunner.Run("train", "--arch", "cnv", "--width", "0.125", "--dataset", "cifar10", "--epochs", "1",
            "--out", dir.File("run/m.bnn"), "--data", dir.Path, "--batch", "20", "--max-batches", "2", "--bf16-convs", "false");
        Assert.True(code == 0, error);
        Directory.CreateDirectory(dir.File("models/checkpoints"));
        File.Copy(dir.File("run/m.bnn"), dir.File("models/tiny-cifar10.bnn"));
        (code, _, error) = Cli.CliRunner.Run("checkpoint-pack", "--checkpoint", dir.File("run/m.best.ckpt"), "--out", dir.File("models/checkpoints/tiny-cifar10.best.pack"));
        Assert.True(code == 0, error);

        // A budget that admits any merge, so that there is something to fine-tune
        (code, var output, error) = Cli.CliRunner.Run("reproduce", "--data", dir.Path, "--models", dir.File("models"), "--max-radius", "1",
            "--steiner", "false", "--max-loss", "1", "--finetune-epochs", "1");

        Assert.True(code == 0, error);
        Assert.Contains($"tiny-cifar10: sharing-aware fine-tuning for 1 epochs from {dir.File("models/checkpoints/tiny-cifar10.best.pack")}", error, StringComparison.Ordinal);
        Assert.Contains("approx+finetune", output, StringComparison.Ordinal);
    }

    private static List<float> Latents(BinaryNetwork net) =>
        net.Stages.OfType<BinaryNetwork.IBinaryWeights>().SelectMany(s => s.Weight.detach().clone().data<float>().ToArray()).ToList();

    [Fact]
    public void FloatTwinPack_StoresRealWeightsExactly_EvenPastOne_AndResumesTheRunWithItsWeightDecay()
    {
        // Given a float twin trained two epochs with weight decay, one of whose weights is then scaled past ±1
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 48, seed: 6, batches: 2)
            with { Float = true, Bf16BinaryConvs = false, WeightDecay = 0.05, Epochs = 2, Out = dir.File("run/t.bnn") };
        var run = Trainer.Train(options);
        var header = Checkpoint.ReadHeader(run.CheckpointPath);
        using var net = Checkpoint.NetworkFor(header);
        Checkpoint.ReadState(run.CheckpointPath, net, null);
        using (no_grad())
        {
            net.state_dict()["stages.0.weight"].mul_(40);
        }
        Assert.True(net.state_dict()["stages.0.weight"].abs().max().item<float>() > 1);
        Checkpoint.Write(run.CheckpointPath, header, net, null);

        // When it is packed and read back
        var pack = CheckpointPack.Pack(run.CheckpointPath, dir.File("t.pack"));
        using var back = Checkpoint.NetworkFor(header);
        Checkpoint.ReadState(pack.PackPath, back, null);

        // Then every tensor is the checkpoint's, bit for bit: a float twin has no latent weights to store in fixed point
        var backState = back.state_dict();
        foreach (var (name, tensor) in net.state_dict())
        {
            Assert.True(tensor.eq(backState[name]).all().item<bool>(), name);
        }

        Assert.Contains("a pack (weights in float32, no optimizer state)", CheckpointReport.Read(pack.PackPath).Describe(), StringComparison.Ordinal);

        // And a resume from the pack trains on, a float twin with the run's weight decay
        var resumed = Trainer.Train(options with { Epochs = 3, Resume = pack.PackPath, WeightDecay = null, Out = dir.File("next/t.bnn") });
        var resumedHeader = Checkpoint.ReadHeader(resumed.CheckpointPath);
        Assert.Equal((3, true, 0.05), (resumedHeader.CompletedEpochs, resumedHeader.Float, resumedHeader.WeightDecay));
        Assert.Equal(3, resumed.History.Count);
    }

    private static byte[] ModelBytes(string checkpoint, TempDirectory dir)
    {
        var path = dir.File("model-" + Guid.NewGuid().ToString("N") + ".bnn");
        ModelFile.Save(Exporter.FromCheckpoint(checkpoint), path);
        return File.ReadAllBytes(path);
    }

    /// <summary>A CNV ×0.125 whose every tensor holds seeded random values: latents over [−1, 1], batch norm not at its defaults.</summary>
    private static BinaryNetwork RandomNetwork(int seed)
    {
        torch.manual_seed(seed);
        var net = new BinaryNetwork(Architectures.Build("cnv", 0.125, 10));
        var latent = CheckpointPack.LatentNames(net);
        using var _ = no_grad();
        foreach (var (name, tensor) in net.state_dict())
        {
            if (tensor.dtype == ScalarType.Int64)
            {
                tensor.fill_(seed * 100);
            }
            else if (latent.Contains(name))
            {
                tensor.uniform_(-1, 1);
            }
            else
            {
                tensor.uniform_(0.25, 2);
            }
        }
        return net;
    }

    private static CheckpointHeader Header(int completed, int best) => new()
    {
        Arch = "cnv", Width = 0.125, Dataset = "cifar10", Classes = 10, BinaryPadValue = 1, Seed = 1, Epochs = 10,
        LearningRate = 2e-3, BatchSize = 20, ValidationCount = 100, CompletedEpochs = completed, BestEpoch = best,
        BestValidationAccuracy = 0.5, HasOptimizerState = false,
        History = Enumerable.Range(1, completed).Select(e => new EpochRecord(e, 1, 0.5, 1, 0.5, 1e-3, 10, 10.0 * e, 100)).ToList(),
    };

    private static void AssertSameWithinFixedPoint(BinaryNetwork expected, BinaryNetwork actual)
    {
        var latent = CheckpointPack.LatentNames(expected);
        var actualState = actual.state_dict();
        foreach (var (name, tensor) in expected.state_dict())
        {
            var other = actualState[name];
            if (latent.Contains(name))
            {
                Assert.True(tensor.ge(0).eq(other.ge(0)).all().item<bool>(), $"{name}: a sign changed");
                Assert.True((tensor - other).abs().max().item<float>() <= 2 * HalfStep, name);
            }
            else
            {
                Assert.True(tensor.eq(other).all().item<bool>(), $"{name} changed");
            }
        }
    }
}
