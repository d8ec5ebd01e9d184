using Bnn.Data;
using Bnn.Engine;
using Bnn.Engine.Reference;
using Bnn.Model;
using Bnn.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Bnn.Tests.Training;

/// <summary>
/// The trainer's building blocks against their definitions, and the end-to-end promise: the engine reproduces the
/// trained network's eval-mode predictions exactly. Smoke-sized: a few batches on generated data.
/// </summary>
[Collection("torch")]
public sealed class TrainingTests
{
    [Fact]
    public void SteSign_Forward_IsSignWithZeroPositive_AndGradientIsClippedIdentity()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new float[] { -2f, -1f, -0.5f, 0f, 0.5f, 1f, 1.5f }, requires_grad: true);
        var y = SteSign.Sign(x);
        Assert.Equal(new float[] { -1, -1, -1, 1, 1, 1, 1 }, y.data<float>().ToArray());
        (y * tensor(new float[] { 1, 2, 3, 4, 5, 6, 7 })).sum().backward();
        Assert.Equal(new float[] { 0, 2, 3, 4, 5, 6, 0 }, x.grad!.data<float>().ToArray());

        // Where no gradient can flow, the same values, and no graph
        using (no_grad())
        {
            var evaluated = SteSign.Sign(x);
            Assert.False(evaluated.requires_grad);
            Assert.Equal(y.data<float>().ToArray(), evaluated.data<float>().ToArray());
        }
    }

    [Fact]
    public void SteSign_MadeInBf16_GivesTheSameSigns_AFloat32Gradient_AndKeepsTheLayout()
    {
        using var scope = NewDisposeScope();
        var values = new float[] { -2f, -1f, -0.5f, 0f, 0.5f, 1f, 1.5f };
        var upstream = tensor(new float[] { 1, 2, 3, 4, 5, 6, 7 });
        var x = tensor(values, requires_grad: true);
        var x16 = tensor(values, requires_grad: true);

        // When the same values are binarized in float32 and in bfloat16, and gradients flow back through both
        var y = SteSign.Sign(x);
        var y16 = SteSign.Sign(x16, bfloat16);
        (y * upstream).sum().backward();
        (y16 * upstream.to_type(bfloat16)).sum().backward();

        // Then the signs are equal, and the input's gradient is float32 and equal
        Assert.Equal(bfloat16, y16.dtype);
        Assert.Equal(y.data<float>().ToArray(), y16.to_type(float32).data<float>().ToArray());
        Assert.Equal(float32, x16.grad!.dtype);
        Assert.Equal(x.grad!.data<float>().ToArray(), x16.grad.data<float>().ToArray());

        // And a channels-last input gives channels-last signs, which the next conv needs for its fast kernels
        var channelsLast = BinaryNetwork.ToChannelsLast(randn(2, 3, 4, 5));
        Assert.Equal(channelsLast.stride(), SteSign.Binarize(channelsLast, bfloat16).stride());
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(1, 1)]
    [InlineData(1, -1)]
    public void ConvStage_EqualsFloatConvOnSignedWeightsAndPaddedInput_AndTheEngine(int padding, int padValue)
    {
        // Given a binary conv stage (not the first layer) with ±1 padding
        using var scope = NewDisposeScope();
        manual_seed(3);
        var specs = new LayerSpec[] { new ConvSpec(6, 3, 1, 0), new ConvSpec(5, 3, 1, padding), new OutputSpec(4) };
        using var net = new BinaryNetwork(specs, inChannels: 2, binaryPadValue: padValue, inputSize: 9);
        net.eval();
        var stage = (BinaryNetwork.ConvStage)net.Stages[1];
        var x = randint(0, 2, [3, 6, 7, 7]).to_type(float32) * 2 - 1;

        // When it runs, then it equals conv2d(pad(x, padValue), sign(w)) → batch norm → sign
        var expectedPre = nn.functional.conv2d(nn.functional.pad(x, [padding, padding, padding, padding], value: padValue), SteSign.Binarize(stage.Weight), null, [1, 1], [0, 0]);
        var expected = SteSign.Binarize(stage.Norm.forward(expectedPre));
        Assert.True(stage.forward(x).eq(expected).all().item<bool>());

        // And the engine agrees with the whole network's eval forward (random BN statistics, so thresholds vary)
        using (no_grad())
        {
            stage.Norm.running_mean!.uniform_(-5, 5);
            stage.Norm.running_var!.uniform_(1, 20);
            stage.Norm.weight!.uniform_(-1, 1);
        }
        var model = Exporter.ToModel(net, "test", inChannels: 2, height: 9, width: 9);
        var images = TestData.RandomImages(50, 5, channels: 2, height: 9, width: 9, classes: 4);
        AssertEngineMatchesTorch(net, model, images);
    }

    /// <summary>
    /// Both networks' scores on <paramref name="x"/>, and every parameter's gradient of their sums, or of their dot
    /// products with <paramref name="scoreWeights"/> (a plain sum through training-mode batch norm is nearly constant,
    /// so its gradients are mostly cancellation).
    /// </summary>
    internal static (Tensor A, Tensor B, List<Tensor> GradsA, List<Tensor> GradsB) ForwardAndBackward(
        BinaryNetwork first, BinaryNetwork second, Tensor x, Tensor? scoreWeights = null)
    {
        var a = first.forward(x);
        var b = second.forward(x);
        (scoreWeights is null ? a.sum() : (a * scoreWeights).sum()).backward();
        (scoreWeights is null ? b.sum() : (b * scoreWeights).sum()).backward();
        var gradsA = first.parameters().Select(p => p.grad!).ToList();
        var gradsB = second.parameters().Select(p => p.grad!).ToList();
        Assert.Equal(gradsA.Count, gradsB.Count);
        return (a, b, gradsA, gradsB);
    }

    /// <summary>One-epoch smoke options on a generated, learnable CIFAR-10 directory of <paramref name="perBatch"/> records per batch file.</summary>
    internal static TrainOptions TinyCnv(TempDirectory dir, int perBatch, int dataSeed, int seed, int batches)
    {
        TestData.WriteCifarDirectory(dir, perBatch, dataSeed, learnable: true);
        return new TrainOptions
        {
            Arch = "cnv", Width = 0.125, Dataset = "cifar10", DataDir = dir.Path, Epochs = 1,
            Out = dir.File("m.bnn"), Seed = seed, BatchSize = 20, MaxBatchesPerEpoch = batches, ValidationCount = perBatch,
        };
    }

    [Fact]
    public void TrainCommand_LogsTheBuildAndSetupFirst_ThenOneLinePerEpoch()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, 100, seed: 29, learnable: true);
        var (code, output, error) = Bnn.Tests.Cli.CliRunner.Run("train", "--arch", "cnv", "--width", "0.125", "--dataset", "cifar10",
            "--data", dir.Path, "--epochs", "2", "--batch", "20", "--max-batches", "1", "--bf16-convs", "false", "--out", dir.File("m.bnn"));

        Assert.True(code == 0, error);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^bnn \d+\.\d+\.\d+", lines[0]);
        Assert.Equal($"bnn {Bnn.Cli.BnnApp.Version}", lines[0]);
        Assert.Equal(
            "cnv ×0.125 on cifar10: 400 training and 100 validation images, batch 20; epochs 1-2, learning rate 2e-3 cosine-annealed " +
            "over epochs 1-2; augmentation crop-flip; channels-last, binary convs in float32", lines[1]);
        Assert.StartsWith("epoch 1/2: loss ", lines[2], StringComparison.Ordinal);
        Assert.StartsWith("epoch 2/2: loss ", lines[3], StringComparison.Ordinal);

        // The run's checkpoint then describes itself, and draws its curves
        var plot = dir.File("plots/curves.png");
        (code, output, error) = Bnn.Tests.Cli.CliRunner.Run("checkpoint-info", "--checkpoint", dir.File("m.ckpt"), "--last", "2", "--plot", plot);
        Assert.True(code == 0, error);
        lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("cnv ×0.125 on cifar10, seed 1, batch 20, 100 validation images", lines[0]);
        Assert.Equal("epoch 2 of 2 done; learning rate 2e-3 cosine-annealed over epochs 1-2; augmentation crop-flip; channels-last, binary convs in float32", lines[1]);
        Assert.Matches(@"^best validation \d+\.\d\d % at epoch [12]; resumable \(holds Adam's state\)$", lines[2]);
        Assert.Equal(["epoch", "1", "2"], lines[4..7].Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[0]));
        var png = File.ReadAllBytes(plot);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
        Assert.Equal((900, 500), (System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)), System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20))));
    }

    [Fact]
    public void CheckpointInfo_RefusesAMissingCheckpoint_APlotThatWouldOverwriteIt_AndAPlotOfNoEpochs()
    {
        using var dir = new TempDirectory();
        var (code, _, error) = Bnn.Tests.Cli.CliRunner.Run("checkpoint-info", "--checkpoint", dir.File("none.ckpt"));
        Assert.Equal((1, true), (code, error.Contains("not found", StringComparison.Ordinal)));

        var path = dir.File("run.ckpt");
        File.WriteAllText(path, "kept");
        (code, _, error) = Bnn.Tests.Cli.CliRunner.Run("checkpoint-info", "--checkpoint", path, "--plot", path);
        Assert.Equal((1, true, "kept"), (code, error.Contains("would overwrite", StringComparison.Ordinal), File.ReadAllText(path)));

        (code, _, error) = Bnn.Tests.Cli.CliRunner.Run("checkpoint-info", "--checkpoint", path);
        Assert.Equal((2, true), (code, error.Contains("not a bnn training checkpoint", StringComparison.Ordinal)));

        // A checkpoint with no completed epoch is described, but has no curves to draw
        var fresh = dir.File("fresh.ckpt");
        using (var net = new BinaryNetwork([new ConvSpec(4, 3, 1, 0), new OutputSpec(2)], inChannels: 3, inputSize: 5))
        {
            Checkpoint.Write(fresh, new CheckpointHeader
            {
                Arch = "cnv", Width = 0.125, Dataset = "cifar10", Classes = 2, BinaryPadValue = 1, Seed = 1, Epochs = 3,
                LearningRate = 2e-3, BatchSize = 20, ValidationCount = 100, CompletedEpochs = 0, BestEpoch = 0, BestValidationAccuracy = 0,
                History = [], HasOptimizerState = false,
            }, net, optimizer: null);
        }
        (code, var output, error) = Bnn.Tests.Cli.CliRunner.Run("checkpoint-info", "--checkpoint", fresh);
        Assert.True(code == 0, error);
        Assert.Contains("epoch 0 of 3 done", output, StringComparison.Ordinal);
        (code, _, error) = Bnn.Tests.Cli.CliRunner.Run("checkpoint-info", "--checkpoint", fresh, "--plot", dir.File("curves.png"));
        Assert.Equal((1, true, false), (code, error.Contains("no completed epoch to draw", StringComparison.Ordinal), File.Exists(dir.File("curves.png"))));
    }

    [Fact]
    public void Resume_KeepsTheRunsLayoutAndPrecision_UnlessToldOtherwise()
    {
        using var dir = new TempDirectory();
        var options = TinyCnv(dir, perBatch: 100, dataSeed: 27, seed: 3, batches: 1);
        // By default a run is channels-last and chooses bfloat16, which it runs only where the CPU has it (a host without
        // it still records the choice, for the next resume elsewhere: Bf16Choice_RunsWhereTheHardwareHasIt...)
        TrainSetup? setup = null;
        var defaults = Checkpoint.ReadHeader(Trainer.Train(options with { Out = dir.File("d.bnn") }, started: s => setup = s).CheckpointPath);
        Assert.Equal((true, true), (defaults.ChannelsLast, defaults.Bf16BinaryConvs));
        Assert.Equal((true, TrainOptions.CpuHasBf16DotProducts), (setup!.ChannelsLast, setup.Bf16BinaryConvs));

        // Given a run trained contiguous and in float32
        var first = Trainer.Train(options with { ChannelsLast = false, Bf16BinaryConvs = false });

        // When resuming it without either option (the plain resume kept both)
        var kept = Checkpoint.ReadHeader(Trainer.Train(options with { Epochs = 2, Resume = first.CheckpointPath }).CheckpointPath);
        Assert.Equal((2, false, false), (kept.CompletedEpochs, kept.ChannelsLast, kept.Bf16BinaryConvs));

        // Then once more with channels-last: the explicit option won over the recorded layout only
        var switched = Trainer.Train(options with { Epochs = 3, Resume = first.CheckpointPath, ChannelsLast = true });
        var switchedHeader = Checkpoint.ReadHeader(switched.CheckpointPath);
        Assert.Equal((true, false), (switchedHeader.ChannelsLast, switchedHeader.Bf16BinaryConvs));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void ChannelsLastNetwork_GivesTheSameScoresAndGradients(int padding)
    {
        // Given two networks with the same initial weights, one running its convs channels-last
        using var scope = NewDisposeScope();
        var specs = new LayerSpec[] { new ConvSpec(8, 3, 1, padding), new ConvSpec(12, 3, 1, padding), new PoolSpec(2), new DenseSpec(10), new OutputSpec(4) };
        manual_seed(5);
        using var plain = new BinaryNetwork(specs, inChannels: 3, inputSize: 8);
        manual_seed(5);
        using var channelsLast = new BinaryNetwork(specs, inChannels: 3, inputSize: 8, channelsLast: true);
        var x = randint(-255, 256, [4, 3, 8, 8]).to_type(float32);

        // When both run forward and backward on the same batch
        var (a, b, gradsA, gradsB) = ForwardAndBackward(plain, channelsLast, x);

        // Then scores (integer sums, exact in float32 in any order) and every weight gradient are equal
        Assert.True(a.eq(b).all().item<bool>());
        for (int i = 0; i < gradsA.Count; i++)
        {
            Assert.True(gradsA[i].allclose(gradsB[i], rtol: 1e-4, atol: 1e-5), $"gradient {i} differs");
        }
    }

    [Fact]
    public void Bf16Convolve_IsExactWhileSumsFitIn8Bits_AndRoundsBeyond()
    {
        using var scope = NewDisposeScope();

        // Given ±1 inputs and weights whose sums fit bfloat16's 8 significant bits (27 taps)
        manual_seed(9);
        var x = randint(0, 2, [2, 3, 6, 6]).to_type(float32).mul(2).sub(1);
        var w = randint(0, 2, [5, 3, 3, 3]).to_type(float32).mul(2).sub(1);

        // Then the bfloat16 product is exact
        var exact = BinaryNetwork.ConvStage.Convolve(x, w, 1, 1, inBf16: false);
        Assert.True(exact.eq(BinaryNetwork.ConvStage.Convolve(x, w, 1, 1, inBf16: true)).all().item<bool>());

        // Given a sum of 567 taps that comes to 565, which needs 9 significant bits
        var allOnes = ones(1, 63, 3, 3);
        var y = allOnes.clone();
        y[0, 0, 0, 0] = tensor(-1f);

        // Then float32 keeps it, and bfloat16 rounds it to the nearest representable 564 (within 1/256)
        Assert.Equal(565f, BinaryNetwork.ConvStage.Convolve(y, allOnes, 1, 0, inBf16: false).item<float>());
        Assert.Equal(564f, BinaryNetwork.ConvStage.Convolve(y, allOnes, 1, 0, inBf16: true).to_type(float32).item<float>());
    }

    [Theory]
    [InlineData("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni", true)]
    [InlineData("flags\t\t: fpu amx_bf16 amx_tile", true)]
    [InlineData("flags\t\t: fpu avx512f avx512_vnni", false)]
    [InlineData("model name\t: avx512_bf16 in a name, not a flag", false)]
    [InlineData("", false)]
    public void Bf16Default_FollowsTheCpuFlags(string cpuinfo, bool expected)
    {
        Assert.Equal(expected, TrainOptions.ReportsBf16DotProducts(cpuinfo.Split('\n')));
    }

    [Theory]
    [InlineData(null, null, true, true, true)] // a new run: on where the hardware has it
    [InlineData(null, null, false, false, true)] // ...and recorded as wanted where it does not
    [InlineData(null, true, false, false, true)] // a resume on a host without it keeps the choice for the next
    [InlineData(null, true, true, true, true)]
    [InlineData(null, false, true, false, false)] // a run that chose float32 stays float32
    [InlineData(false, true, true, false, false)] // told: as told, and recorded
    [InlineData(true, false, false, true, true)]
    public void Bf16Choice_RunsWhereTheHardwareHasIt_AndIsKeptAcrossHostsWithout(bool? requested, bool? resumed, bool cpu, bool run, bool record)
    {
        Assert.Equal((run, record), TrainOptions.ResolveBf16(requested, resumed, cpu));
    }

    [Fact]
    public void Bf16Network_MultipliesInBf16OnlyInBinaryLayersWhileTraining_AndMatchesFloat32WhileSumsAreSmall()
    {
        // Given two networks with the same initial weights, one multiplying its binary convs in bfloat16
        using var scope = NewDisposeScope();
        var specs = new LayerSpec[] { new ConvSpec(8, 3, 1, 1), new ConvSpec(12, 3, 1, 1), new PoolSpec(2), new DenseSpec(10), new OutputSpec(4) };
        manual_seed(7);
        using var plain = new BinaryNetwork(specs, inChannels: 3, inputSize: 8);
        manual_seed(7);
        using var bf16 = new BinaryNetwork(specs, inChannels: 3, inputSize: 8, bf16Convs: true);
        var x = randint(-255, 256, [4, 3, 8, 8]).to_type(float32);
        var convs = bf16.Stages.OfType<BinaryNetwork.ConvStage>().ToList();

        // Then only the binary conv multiplies in bfloat16, every conv makes its signs in it, and only in training mode
        Assert.Equal([false, true], convs.Select(c => c.MultipliesInBf16));
        Assert.Equal([true, true], convs.Select(c => c.MakesSignsInBf16));
        Assert.All(plain.Stages.OfType<BinaryNetwork.ConvStage>(), c => Assert.False(c.MakesSignsInBf16));
        bf16.eval();
        Assert.All(convs, c => Assert.False(c.MultipliesInBf16 || c.MakesSignsInBf16));
        bf16.train();

        // And each training conv stage hands on bfloat16 signs, while evaluation stays float32
        Assert.Equal(bfloat16, convs[1].forward(convs[0].forward(x)).dtype);
        bf16.eval();
        Assert.Equal(float32, convs[1].forward(convs[0].forward(x)).dtype);
        bf16.train();

        // When both run forward and backward (the binary conv sums 72 taps, exact in bfloat16)
        var (a, b, gradsA, gradsB) = ForwardAndBackward(plain, bf16, x);

        // Then the scores are equal, and every gradient is nonzero and agrees to bfloat16's precision
        Assert.True(a.eq(b).all().item<bool>());
        for (int i = 0; i < gradsA.Count; i++)
        {
            // bfloat16 rounds each gradient it carries to 1/256; a few roundings compound
            float error = gradsA[i].sub(gradsB[i]).abs().max().item<float>();
            float scale = gradsA[i].abs().max().item<float>();
            Assert.True(scale > 0 && error <= scale / 64, $"gradient {i}: error {error} against scale {scale}");
        }
    }

    [Fact]
    public void TrainSmoke_CnvAndResume_ExportsAModelTheEngineReproducesExactly()
    {
        using var dir = new TempDirectory();
        var options = TinyCnv(dir, perBatch: 100, dataSeed: 21, seed: 5, batches: 6);

        // When training one epoch, then resuming to two
        var first = Trainer.Train(options);
        var second = Trainer.Train(options with { Epochs = 2, Resume = first.CheckpointPath });

        // Then the run has two logged epochs, and the exported model reproduces torch's eval forward
        Assert.Equal(2, second.History.Count);
        Assert.Equal(3, File.ReadAllLines(second.LogPath).Length);
        var model = ModelFile.Load(dir.File("m.bnn"));
        using var net = Exporter.LoadNetwork(second.BestCheckpointPath);
        var test = Datasets.Load("cifar10", dir.Path, "test");
        AssertEngineMatchesTorch(net, model, test);
    }

    [Fact]
    public void Resume_IntoANewOut_CarriesTheBestEpochAlong()
    {
        using var dir = new TempDirectory();
        var options = TinyCnv(dir, perBatch: 100, dataSeed: 23, seed: 5, batches: 2);
        var first = Trainer.Train(options);

        // When resumed into another --out with no epoch left to beat the carried best (the worst case: nothing new)
        var second = Trainer.Train(options with { Resume = first.CheckpointPath, Out = dir.File("next.bnn") });

        // Then the new out holds the same best weights, and its model is that epoch's export
        Assert.Equal(dir.File("next.best.ckpt"), second.BestCheckpointPath);
        Assert.Equal(File.ReadAllBytes(first.BestCheckpointPath), File.ReadAllBytes(second.BestCheckpointPath));
        Assert.Equal(File.ReadAllBytes(dir.File("m.bnn")), File.ReadAllBytes(dir.File("next.bnn")));
    }

    [Fact]
    public void Resume_IntoANewOut_WithoutTheBestCheckpoint_IsAClearErrorBeforeTraining()
    {
        using var dir = new TempDirectory();
        var options = TinyCnv(dir, perBatch: 100, dataSeed: 23, seed: 5, batches: 2);
        var first = Trainer.Train(options);
        File.Delete(first.BestCheckpointPath);

        var e = Assert.Throws<BnnDataException>(() => Trainer.Train(options with { Epochs = 2, Resume = first.CheckpointPath, Out = dir.File("next.bnn") }));
        Assert.Contains("m.best.ckpt", e.Message);
        Assert.False(File.Exists(dir.File("next.ckpt")));
    }

    [Theory]
    [InlineData("cnv", 0.125)]
    [InlineData("binarynet-vgg", 1.0 / 16)]
    public void SharingFineTune_KeepsEveryMergedClassTied_AndReportsEngineAccuracy(string arch, double width)
    {
        // Given a briefly trained network (the VGG pads: its merged layers must be tied through padding too) and its radius-1 merge
        using var dir = new TempDirectory();
        var trained = Trainer.Train(TinyCnv(dir, perBatch: 100, dataSeed: 23, seed: 6, batches: 8) with { Arch = arch, Width = width });
        var model = ModelFile.Load(dir.File("m.bnn"));
        var merged = model.WithLayers(model.Layers.Select(l => l is ConvLayer c ? Bnn.Sharing.ApproximatePlanner.Merge(c, 1).Layer : l).ToList());
        var (train, validation) = Datasets.HoldOut(Datasets.Load("cifar10", dir.Path, "train"), 100);

        // When fine-tuning with the classes tied
        var result = SharingFineTuner.Run(trained.BestCheckpointPath, model, merged, train, validation, epochs: 2, learningRate: 1e-2, maxBatchesPerEpoch: 6);

        // Then every class of the merged model is still one class (up to sign) in every channel of the result
        Assert.Equal(2, result.History.Count);
        foreach (var ((_, before), (_, after)) in merged.ConvLayers.Zip(result.Model.ConvLayers))
        {
            int n = before.KernelH * before.KernelW;
            var map = new Dictionary<(int, int), int>();
            for (int k = 0; k < before.OutChannels; k++)
            {
                for (int ch = 0; ch < before.InChannels; ch++)
                {
                    int from = Bnn.Sharing.FilterCode.Code(before, k, ch), to = Bnn.Sharing.FilterCode.Code(after, k, ch);
                    var key = (ch, Bnn.Sharing.FilterCode.Class(from, n));
                    // The orientation relation is kept too: a member negated in the merge stays negated.
                    int relation = Bnn.Sharing.FilterCode.Sign(from, n) * Bnn.Sharing.FilterCode.Sign(to, n);
                    int value = (Bnn.Sharing.FilterCode.Class(to, n) * 2) + (relation > 0 ? 0 : 1);
                    Assert.Equal(map.GetValueOrDefault(key, value), value);
                    map[key] = value;
                }
            }
        }
        Assert.Equal(EngineExtensions.Accuracy(new PackedEngine(result.Model).Run(validation).Predictions, validation), result.ValidationAfter, 12);
        Assert.Equal(EngineExtensions.Accuracy(new PackedEngine(merged).Run(validation).Predictions, validation), result.ValidationBefore, 12);
    }

    [Fact]
    public void SharingFineTune_CheckpointOfAnotherModel_IsAClearError()
    {
        using var dir = new TempDirectory();
        var trained = Trainer.Train(TinyCnv(dir, perBatch: 40, dataSeed: 24, seed: 7, batches: 2));
        var other = RandomModels.Create(Architectures.Build("cnv", 0.125), new Shape(3, 32, 32), seed: 3);
        var (train, validation) = Datasets.HoldOut(Datasets.Load("cifar10", dir.Path, "train"), 40);
        var e = Assert.Throws<BnnDataException>(() => SharingFineTuner.Run(trained.BestCheckpointPath, other, other, train, validation, 1));
        Assert.Contains("not those of the model", e.Message);
    }

    [Theory]
    [InlineData("cnv", 0.125)]
    [InlineData("binarynet-vgg", 1.0 / 16)]
    [InlineData("airbench", 0.125)]
    public void Validate_InTheEngine_GivesTorchSharpsAccuracyAndLoss(string arch, double width)
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 60, seed: 37, learnable: true);
        var result = Trainer.Train(new TrainOptions
        {
            Arch = arch, Width = width, Dataset = "cifar10", DataDir = dir.Path, Epochs = 1,
            Out = dir.File("m.bnn"), Seed = 4, BatchSize = 20, MaxBatchesPerEpoch = 4, ValidationCount = 60,
        });
        using var net = Exporter.LoadNetwork(result.CheckpointPath);
        var images = Datasets.Load("cifar10", dir.Path, "train");
        var (torchLoss, torchAccuracy) = Trainer.Evaluate(net, images);
        var (engineLoss, engineAccuracy) = Trainer.Validate(net, images, threads: 2);
        Assert.Equal(torchAccuracy, engineAccuracy);
        Assert.Equal(torchLoss, engineLoss, tolerance: 1e-4 * torchLoss);
        // The recorded epoch was validated the same way.
        Assert.Equal(result.History[^1].ValidationAccuracy, Trainer.Validate(net, Datasets.HoldOut(images, 60).Validation).Accuracy);
    }

    [Fact]
    public void TrainSmoke_PaddedVgg_EngineReproducesTorchIncludingPadding()
    {
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 60, seed: 31, learnable: true);
        var options = new TrainOptions
        {
            Arch = "binarynet-vgg", Width = 1.0 / 16, Dataset = "cifar10", DataDir = dir.Path, Epochs = 1,
            Out = dir.File("vgg.bnn"), Seed = 2, BatchSize = 20, MaxBatchesPerEpoch = 4, ValidationCount = 60,
        };
        var result = Trainer.Train(options);
        var model = ModelFile.Load(dir.File("vgg.bnn"));
        Assert.Contains(model.ConvLayers, c => c.Layer.Padding == 1 && c.Layer.PadValue == 1);
        using var net = Exporter.LoadNetwork(result.BestCheckpointPath);
        AssertEngineMatchesTorch(net, model, Datasets.Load("cifar10", dir.Path, "test"));
    }

    [Fact]
    public void Resume_MissingCheckpointMagic_IsAClearError()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("x.ckpt"), "nope");
        var e = Assert.Throws<BnnDataException>(() => Checkpoint.ReadHeader(dir.File("x.ckpt")));
        Assert.Contains("x.ckpt", e.Message);
    }

    internal static void AssertEngineMatchesTorch(BinaryNetwork net, BnnModel model, ImageSet images)
    {
        var torch64 = Trainer.Predict(net, images, ScalarType.Float64);
        var torch32 = Trainer.Predict(net, images, ScalarType.Float32);
        var engine = new PackedEngine(model).Run(images).Predictions;
        var reference = new ReferenceEngine(model).Run(images.Take(10)).Predictions;
        Assert.Equal(torch64, engine);
        Assert.Equal(torch32, engine);
        Assert.Equal(engine[..reference.Length], reference);
    }
}
