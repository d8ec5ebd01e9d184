using Bnn.Data;
using Bnn.Model;
using Bnn.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Bnn.Tests.Training;

/// <summary>
/// BinaryNet's order (conv, pool, batch norm, sign) against the engine's (conv, batch norm, sign, pool): equal while
/// the pooled stages' batch-norm scale is ≥ 0, which training keeps and conversion from the other order establishes.
/// </summary>
[Collection("torch")]
public sealed class PoolOrderTests
{
    // A pool after the first (pixel) conv and after a binary one, so both kinds of stage are covered.
    private static readonly LayerSpec[] Specs =
        [new ConvSpec(6, 3, 1, 1), new PoolSpec(2), new ConvSpec(8, 3, 1, 1), new PoolSpec(2), new DenseSpec(10), new OutputSpec(4)];

    private static BinaryNetwork Network(bool poolBeforeNorm, int seed)
    {
        manual_seed(seed);
        return new BinaryNetwork(Specs, inChannels: 3, inputSize: 8, poolBeforeNorm: poolBeforeNorm);
    }

    /// <summary>Batch-norm statistics and scales away from their defaults, so that thresholds vary by channel; γ in [lo, 1].</summary>
    private static void RandomizeNorms(BinaryNetwork net, double gammaLow)
    {
        using var _ = no_grad();
        foreach (var conv in net.Stages.OfType<BinaryNetwork.ConvStage>())
        {
            double spread = conv.IsFirst ? 2000 : 10;
            conv.Norm.running_mean!.uniform_(-spread, spread);
            conv.Norm.running_var!.uniform_(1, spread * spread / 4);
            conv.Norm.weight!.uniform_(gammaLow, 1);
            conv.Norm.bias!.uniform_(-0.5, 0.5);
        }
    }

    private static Tensor Pixels(int count) => randint(0, 256, [count, 3, 8, 8]).to_type(float32);

    [Fact]
    public void PooledConvStage_IsConvThenPoolThenNormThenSign_AndKeepsTheOtherOrdersParameterNames()
    {
        using var scope = NewDisposeScope();
        using var net = Network(poolBeforeNorm: true, seed: 1);
        using var other = Network(poolBeforeNorm: false, seed: 1);
        RandomizeNorms(net, gammaLow: -1);
        net.eval();
        var stage = (BinaryNetwork.ConvStage)net.Stages[2];
        var x = randint(0, 2, [3, 6, 4, 4]).to_type(float32) * 2 - 1;

        var sums = nn.functional.conv2d(nn.functional.pad(x, [1, 1, 1, 1], value: 1), SteSign.Binarize(stage.Weight), null, [1, 1], [0, 0]);
        var expected = SteSign.Binarize(stage.Norm.forward(nn.functional.max_pool2d(sums, 2)));
        Assert.Equal(2, stage.PoolSize);
        Assert.True(stage.forward(x).eq(expected).all().item<bool>());
        Assert.IsType<BinaryNetwork.PooledInConvStage>(net.Stages[3]);
        Assert.IsType<MaxPool2d>(other.Stages[3]);
        Assert.Equal(other.state_dict().Keys.Order(), net.state_dict().Keys.Order());
    }

    [Fact]
    public void PoolBeforeNorm_WithNonNegativeScales_IsReproducedByTheEngine_ANegativeScaleIsRefused()
    {
        // Given a network pooling before batch norm, its scales in [0, 1] with some exactly 0
        using var scope = NewDisposeScope();
        using var net = Network(poolBeforeNorm: true, seed: 2);
        RandomizeNorms(net, gammaLow: 0);
        var pooled = net.Stages.OfType<BinaryNetwork.ConvStage>().ToList();
        using (no_grad())
        {
            pooled.ForEach(c => c.Norm.weight![1] = tensor(-0.5f));
        }
        net.ClipAfterStep();
        Assert.All(pooled, c => Assert.Equal(0f, c.Norm.weight![1].item<float>()));
        net.eval();

        // Then the engine, thresholding and then OR-pooling, gives torch's predictions exactly
        var model = Exporter.ToModel(net, "test", inChannels: 3, height: 8, width: 8);
        Assert.Equal(2, model.Layers.OfType<MaxPoolLayer>().Count());
        TrainingTests.AssertEngineMatchesTorch(net, model, TestData.RandomImages(200, 7, channels: 3, height: 8, width: 8, classes: 4));

        // And a negative scale, which would pool as an AND, is refused rather than exported wrong
        using (no_grad())
        {
            pooled[1].Norm.weight![0] = tensor(-0.25f);
        }
        var error = Assert.Throws<BnnDataException>(() => Exporter.ToModel(net, "test", inChannels: 3, height: 8, width: 8));
        Assert.Contains("negative scale", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ClipAfterStep_ClampsOnlyThePooledStagesScales()
    {
        using var scope = NewDisposeScope();
        var specs = new LayerSpec[] { new ConvSpec(4, 3, 1, 1), new ConvSpec(5, 3, 1, 1), new PoolSpec(2), new OutputSpec(3) };
        using var net = new BinaryNetwork(specs, inChannels: 3, inputSize: 6, poolBeforeNorm: true);
        using (no_grad())
        {
            foreach (var conv in net.Stages.OfType<BinaryNetwork.ConvStage>())
            {
                conv.Norm.weight!.fill_(-0.5);
            }
        }
        net.ClipAfterStep();
        var (unpooled, pooled) = ((BinaryNetwork.ConvStage)net.Stages[0], (BinaryNetwork.ConvStage)net.Stages[1]);
        Assert.Equal((0, 2), (unpooled.PoolSize, pooled.PoolSize));
        Assert.True(unpooled.Norm.weight!.eq(-0.5).all().item<bool>());
        Assert.True(pooled.Norm.weight!.eq(0).all().item<bool>());
    }

    [Fact]
    public void MovePoolsBeforeNorm_ComputesWhatTheOtherOrderDid_AndFlipsAdamsFirstMoments()
    {
        // Given a network trained with pooling after the sign: negative scales, and a latent weight of exactly 0 in a
        // row whose channel will flip
        using var scope = NewDisposeScope();
        using var before = Network(poolBeforeNorm: false, seed: 3);
        RandomizeNorms(before, gammaLow: -1);
        var flippedStage = (BinaryNetwork.ConvStage)before.Stages[2];
        int channel = (int)flippedStage.Norm.weight!.argmin().item<long>();
        using (no_grad())
        {
            flippedStage.Norm.weight![channel] = tensor(-0.75f);
            flippedStage.Weight[channel, 0, 1, 1] = tensor(0f);
        }
        int negatives = before.Stages.OfType<BinaryNetwork.ConvStage>().Sum(c => (int)c.Norm.weight!.lt(0).sum().item<long>());
        before.eval();
        var x = Pixels(64);
        var expected = before.forward(x);

        // When its weights load into the pool-before-norm order, with an optimizer that has taken a step
        using var after = Network(poolBeforeNorm: true, seed: 4);
        after.load_state_dict(before.state_dict());
        var optimizer = TorchSharp.torch.optim.Adam(after.parameters(), 1e-3);
        after.train();
        after.forward(Pixels(8)).square().sum().backward();
        optimizer.step();
        after.load_state_dict(before.state_dict());
        after.eval();
        var plain = after.forward(x);
        var momentsBefore = optimizer.state_dict().State.Cast<Adam.State>().Select(s => s.exp_avg.clone()).ToList();
        int flipped = after.MovePoolsBeforeNorm(optimizer);

        // Then a plain load computed something else (a negative scale pools as an AND there); the converted one computes
        // the same scores, its pooled scales are all ≥ 0 and the zero weight became negative
        Assert.False(plain.eq(expected).all().item<bool>());
        Assert.True(after.forward(x).eq(expected).all().item<bool>());
        Assert.Equal(negatives, flipped);
        Assert.All(after.Stages.OfType<BinaryNetwork.ConvStage>(), c => Assert.True(c.Norm.weight!.ge(0).all().item<bool>()));
        var converted = (BinaryNetwork.ConvStage)after.Stages[2];
        Assert.True(converted.Weight[channel, 0, 1, 1].item<float>() < 0);

        // And Adam's first moments of the flipped channel changed sign, those of an unflipped one did not
        var parameters = after.parameters().ToList();
        var momentsAfter = optimizer.state_dict().State.Cast<Adam.State>().Select(s => s.exp_avg).ToList();
        int weightIndex = parameters.IndexOf(converted.Weight), gammaIndex = parameters.IndexOf(converted.Norm.weight!);
        Assert.True(momentsAfter[weightIndex][channel].eq(-momentsBefore[weightIndex][channel]).all().item<bool>());
        Assert.Equal(-momentsBefore[gammaIndex][channel].item<float>(), momentsAfter[gammaIndex][channel].item<float>());
        Assert.True(momentsBefore[weightIndex][channel].abs().sum().item<float>() > 0);
        int kept = (int)flippedStage.Norm.weight!.argmax().item<long>();
        Assert.True(flippedStage.Norm.weight![kept].item<float>() > 0);
        Assert.True(momentsAfter[weightIndex][kept].eq(momentsBefore[weightIndex][kept]).all().item<bool>());
    }

    [Fact]
    public void RenormalizePooledStages_KeepsEvaluation_AndMakesTrainingOnTheMeasuredBatchComputeWhatEvaluationDid()
    {
        // Given a network converted from the other order
        using var scope = NewDisposeScope();
        using var before = Network(poolBeforeNorm: false, seed: 5);
        RandomizeNorms(before, gammaLow: -1);
        before.eval();
        using var after = Network(poolBeforeNorm: true, seed: 6);
        after.load_state_dict(before.state_dict());
        after.MovePoolsBeforeNorm(null);
        var x = Pixels(64);
        var batch = Pixels(50);
        var expected = before.forward(x);
        var firstStage = (BinaryNetwork.ConvStage)after.Stages[0];
        var oldMean = firstStage.Norm.running_mean!.clone();

        // When its pooled batch norms are re-expressed in the statistics of one batch's pooled sums
        long positions = after.RenormalizePooledStages(measure => measure(batch));

        // Then evaluation computes the same scores, the first stage's running mean is that batch's mean pooled sum
        Assert.Equal(50 * 4 * 4, positions);
        Assert.True(after.forward(x).eq(expected).all().item<bool>());
        Assert.False(firstStage.Norm.running_mean!.eq(oldMean).all().item<bool>());
        using (no_grad())
        {
            var pooledSums = firstStage.Sums(batch);
            Assert.True(firstStage.Norm.running_mean!.allclose(pooledSums.mean([0, 2, 3]), rtol: 1e-5, atol: 1e-3));
        }

        // And training mode on that batch, normalizing by its own statistics, makes the signs that evaluation made
        // before (through both pooled stages; the dense stage after them normalizes by its batch too)
        after.train();
        Tensor trained = batch, evaluated = batch;
        for (int i = 0; i < 4; i++)
        {
            trained = after.Stages[i].forward(trained);
            evaluated = before.Stages[i].forward(evaluated);
        }
        Assert.True(trained.eq(evaluated).all().item<bool>());
    }

    [Fact]
    public void TrainSmoke_PoolBeforeNorm_FreshAndConvertedOnResume_ExportModelsTheEngineReproduces()
    {
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 33, seed: 6, batches: 4) with { Bf16BinaryConvs = false };
        var test = Datasets.Load("cifar10", dir.Path, "test");

        // A fresh run in BinaryNet's order records it and exports a model the engine reproduces
        TrainSetup? setup = null;
        var fresh = Trainer.Train(options with { PoolBeforeNorm = true, Out = dir.File("fresh.bnn") }, started: s => setup = s);
        Assert.True(Checkpoint.ReadHeader(fresh.CheckpointPath).PoolBeforeNorm);
        Assert.StartsWith("cnv ×0.125, pooling before batch norm on cifar10", setup!.Describe(), StringComparison.Ordinal);
        Assert.Null(setup.ChannelsFlippedToPoolBeforeNorm);
        using (var net = Exporter.LoadNetwork(fresh.BestCheckpointPath))
        {
            Assert.True(net.PoolBeforeNorm);
            TrainingTests.AssertEngineMatchesTorch(net, ModelFile.Load(dir.File("fresh.bnn")), test);
        }

        // A run of the other order, resumed into this one, is converted (its setup says how many channels flipped),
        // keeps the order on a plain resume, and still exports exactly
        var old = Trainer.Train(options with { Out = dir.File("old.bnn") });
        Assert.False(Checkpoint.ReadHeader(old.CheckpointPath).PoolBeforeNorm);
        var converted = Trainer.Train(options with { Epochs = 2, Resume = old.CheckpointPath, PoolBeforeNorm = true, Out = dir.File("moved.bnn") },
            started: s => setup = s);
        Assert.NotNull(setup!.ChannelsFlippedToPoolBeforeNorm);
        Assert.Contains("pooling moved before batch norm from the resumed run's order: ", setup.Describe(), StringComparison.Ordinal);
        Assert.Contains("re-expressed in the pooled sums' statistics over 400 training images", setup.Describe(), StringComparison.Ordinal);
        var kept = Trainer.Train(options with { Epochs = 3, Resume = converted.CheckpointPath, Out = dir.File("moved.bnn") }, started: s => setup = s);
        Assert.True(setup!.PoolBeforeNorm);
        Assert.Null(setup.ChannelsFlippedToPoolBeforeNorm);
        Assert.True(Checkpoint.ReadHeader(kept.CheckpointPath).PoolBeforeNorm);
        using (var net = Exporter.LoadNetwork(kept.CheckpointPath))
        {
            TrainingTests.AssertEngineMatchesTorch(net, Exporter.ToModel(net, "kept"), test);
        }
    }

    [Fact]
    public void TrainCommand_PoolBeforeNorm_ReachesTheRun()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, 100, seed: 35, learnable: true);
        var (code, output, error) = Bnn.Tests.Cli.CliRunner.Run("train", "--arch", "cnv", "--width", "0.125", "--dataset", "cifar10",
            "--data", dir.Path, "--epochs", "1", "--batch", "20", "--max-batches", "1", "--pool-before-norm", "--out", dir.File("m.bnn"));
        Assert.True(code == 0, error);
        Assert.StartsWith("cnv ×0.125, pooling before batch norm on cifar10:", output.Split('\n')[1], StringComparison.Ordinal);
        Assert.True(Checkpoint.ReadHeader(dir.File("m.ckpt")).PoolBeforeNorm);
    }
}
