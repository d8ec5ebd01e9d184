using Bnn.Data;
using Bnn.Model;
using Bnn.Training;
using static TorchSharp.torch;

namespace Bnn.Tests.Training;

/// <summary>The float twin and distillation from it, against their definitions, and end to end on generated data.</summary>
[Collection("torch")]
public sealed class DistillationTests
{
    [Fact]
    public void FloatTwinStage_IsConvThenBatchNormThenReluOnTheRealWeights()
    {
        using var scope = NewDisposeScope();
        manual_seed(4);
        var specs = new LayerSpec[] { new ConvSpec(6, 3, 1, 0), new ConvSpec(5, 3, 1, 1), new OutputSpec(4) };
        using var net = new BinaryNetwork(specs, inChannels: 2, inputSize: 9, binarized: false);
        net.eval();
        var stage = (BinaryNetwork.ConvStage)net.Stages[1];
        var x = randn(3, 6, 7, 7);

        // The ±1 pad value of binary layers is kept, so that the twin sees the same borders
        var expected = nn.functional.relu(stage.Norm.forward(
            nn.functional.conv2d(nn.functional.pad(x, [1, 1, 1, 1], value: 1), stage.Weight, null, [1, 1], [0, 0])));
        Assert.True(stage.forward(x).allclose(expected, rtol: 1e-5, atol: 1e-6));
        Assert.False(net.Binarized);
        Assert.False(net.Bf16Convs);
    }

    [Fact]
    public void FloatTwinInBf16_MultipliesInMixedPrecisionWhileTraining_AndEvaluatesInFloat32()
    {
        // Given two float twins with the same initial weights, one multiplying its convs after the first in bfloat16
        using var scope = NewDisposeScope();
        var specs = new LayerSpec[] { new ConvSpec(8, 3, 1, 1), new ConvSpec(12, 3, 1, 1), new PoolSpec(2), new DenseSpec(10), new OutputSpec(4) };
        manual_seed(9);
        using var plain = new BinaryNetwork(specs, inChannels: 3, inputSize: 8, binarized: false);
        manual_seed(9);
        using var mixed = new BinaryNetwork(specs, inChannels: 3, inputSize: 8, bf16Convs: true, binarized: false);
        var x = randint(-255, 256, [4, 3, 8, 8]).to_type(float32);
        var convs = mixed.Stages.OfType<BinaryNetwork.ConvStage>().ToList();

        // Then only the second conv multiplies in bfloat16 while training, and neither makes signs (a twin has none)
        Assert.Equal([false, true], convs.Select(c => c.MultipliesInBf16));
        Assert.All(convs, c => Assert.False(c.MakesSignsInBf16));

        // And evaluation is float32 throughout: the same scores, bit for bit
        plain.eval();
        mixed.eval();
        Assert.True(plain.forward(x).eq(mixed.forward(x)).all().item<bool>());
        plain.train();
        mixed.train();

        // When both run forward and backward in training mode
        var (a, b, gradsA, gradsB) = TrainingTests.ForwardAndBackward(plain, mixed, x, randn(4, 4));

        // Then real products rounded to bfloat16 change the scores, but only within its precision, and the gradients too
        Assert.False(a.eq(b).all().item<bool>());
        Assert.True(a.sub(b).abs().max().item<float>() <= a.abs().max().item<float>() / 32);
        for (int i = 0; i < gradsA.Count; i++)
        {
            // As directions: bfloat16's rounding of the activation gradients is amplified by training-mode batch norm's
            // backward, which subtracts their means (here 10 % of the norm for the first conv's weights; the lowest
            // cosine, 0.984, is the first batch norm's bias). A lost path (a zero or detached gradient) fails.
            var ga = gradsA[i].flatten();
            var gb = gradsB[i].flatten();
            float cosine = (ga.dot(gb) / (ga.norm() * gb.norm())).item<float>();
            Assert.True(cosine >= 0.95, $"gradient {i}: cosine {cosine}");
        }
    }

    [Fact]
    public void Loss_MixesCrossEntropyWithTheTemperatureScaledKlDivergence()
    {
        using var scope = NewDisposeScope();
        manual_seed(6);
        var student = randn(5, 4) * 3;
        var teacher = randn(5, 4) * 3;
        var y = tensor(new long[] { 0, 1, 2, 3, 1 });
        var ce = nn.functional.cross_entropy(student, y).item<float>();

        // α = 0 is cross-entropy alone; a student equal to its teacher has no soft loss
        Assert.Equal(ce, Distillation.Loss(student, (teacher / 4).log_softmax(1), y, 0, 4).item<float>(), 5);
        Assert.Equal(0f, Distillation.Loss(teacher, (teacher / 4).log_softmax(1), y, 1, 4).item<float>(), 5);

        // Otherwise the soft term is T²·mean over images of Σ p_t (log p_t − log p_s), at temperature T
        double t = 3;
        var pt = (teacher / t).softmax(1);
        var kl = (pt * ((teacher / t).log_softmax(1) - (student / t).log_softmax(1))).sum(1).mean().item<float>();
        double expected = (0.25 * ce) + (0.75 * t * t * kl);
        Assert.Equal(expected, Distillation.Loss(student, (teacher / t).log_softmax(1), y, 0.75, t).item<float>(), 4);
    }

    [Fact]
    public void TrainSmoke_FloatTeacherThenDistilledStudent_ExportsAModelTheEngineReproducesExactly()
    {
        // Given a float twin trained briefly as a teacher
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 41, seed: 11, batches: 3);
        TrainSetup? teacherSetup = null;
        var teacher = Trainer.Train(options with { Float = true, Out = dir.File("teacher.bnn"), Bf16BinaryConvs = true }, started: s => teacherSetup = s);

        // Then it trained in mixed precision and says so, has checkpoints but no bit-packed model, and refuses export
        Assert.EndsWith("channels-last, convs after the first in bfloat16 (mixed precision)", teacherSetup!.Describe(), StringComparison.Ordinal);
        Assert.True(Checkpoint.ReadHeader(teacher.BestCheckpointPath) is { Float: true, Bf16BinaryConvs: true });
        Assert.False(File.Exists(dir.File("teacher.bnn")));
        var refusal = Assert.Throws<BnnDataException>(() => Exporter.FromCheckpoint(teacher.BestCheckpointPath));
        Assert.Contains("float", refusal.Message, StringComparison.Ordinal);

        // When a BNN distills from it in bfloat16, then resumes in float32 (the teacher is remembered by the checkpoint)
        var setups = new List<TrainSetup>();
        var student = Trainer.Train(options with { Teachers = [teacher.BestCheckpointPath], DistillWeight = 0.7, DistillTemperature = 2, Bf16BinaryConvs = true },
            started: setups.Add);
        var resumed = Trainer.Train(options with { Epochs = 2, Resume = student.CheckpointPath, Bf16BinaryConvs = false }, started: setups.Add);

        // Then the teacher ran in the student's precision each time, and the resume kept the distillation settings
        Assert.Equal([(true, true), (false, false)], setups.Select(s => (s.Bf16BinaryConvs, s.TeacherInBf16)));
        Assert.All(setups, s => Assert.Equal((teacher.BestCheckpointPath, 0.7, 2.0), (Assert.Single(s.Teachers), s.DistillWeight!.Value, s.DistillTemperature!.Value)));
        Assert.Equal([0, 1], setups.Select(s => s.CompletedEpochs));

        // And the student records its teacher, and the engine reproduces its exported model exactly
        var header = Checkpoint.ReadHeader(resumed.CheckpointPath);
        Assert.Equal([teacher.BestCheckpointPath], header.TeacherPaths);
        Assert.Equal((0.7, 2.0), (header.DistillWeight, header.DistillTemperature));
        Assert.Equal(2, resumed.History.Count);
        using var net = Exporter.LoadNetwork(resumed.BestCheckpointPath);
        TrainingTests.AssertEngineMatchesTorch(net, ModelFile.Load(dir.File("m.bnn")), Datasets.Load("cifar10", dir.Path, "test"));
        // And with the teacher moved, a resume says so and names the option, until it is given the new place
        File.Move(teacher.BestCheckpointPath, dir.File("moved-teacher.ckpt"));
        var missing = Assert.Throws<BnnDataException>(() => Trainer.Train(options with { Epochs = 3, Resume = resumed.CheckpointPath }));
        Assert.Contains($"distilled from {teacher.BestCheckpointPath}, which is not there", missing.Message, StringComparison.Ordinal);
        Assert.Contains("--teacher", missing.Message, StringComparison.Ordinal);
        var moved = Trainer.Train(options with { Epochs = 3, Resume = resumed.CheckpointPath, Teachers = [dir.File("moved-teacher.ckpt")] });
        Assert.Equal([dir.File("moved-teacher.ckpt")], Checkpoint.ReadHeader(moved.CheckpointPath).TeacherPaths);
    }

    [Fact]
    public void WeightDecay_ScalesTheWeightsBy1MinusLrLambdaAfterTheStep_LeavesBatchNorm_AndIsKeptOnResume()
    {
        // Given two float twins trained one step from the same seed on the same batch, the second with weight decay 50
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 47, seed: 5, batches: 1) with { Float = true, Bf16BinaryConvs = false };
        var plain = Trainer.Train(options with { Out = dir.File("plain.bnn") });
        TrainSetup? setup = null;
        var decayed = Trainer.Train(options with { Out = dir.File("decayed.bnn"), WeightDecay = 50 }, started: s => setup = s);

        // Then every conv, dense and output weight is the plain step's times 1 − 2e-3·50 = 0.9, and nothing else moved
        var header = Checkpoint.ReadHeader(decayed.CheckpointPath);
        using var a = Checkpoint.NetworkFor(header);
        using var b = Checkpoint.NetworkFor(header);
        Checkpoint.ReadState(plain.CheckpointPath, a, null);
        Checkpoint.ReadState(decayed.CheckpointPath, b, null);
        var plainState = a.state_dict();
        var weightNames = a.Stages.Select((stage, i) => (stage, i)).Where(s => s.stage is BinaryNetwork.IBinaryWeights)
            .Select(s => $"stages.{s.i}.weight").ToHashSet();
        Assert.Equal(9, weightNames.Count); // the CNV: six convs, two dense stages and the output
        foreach (var (name, value) in b.state_dict())
        {
            var expected = weightNames.Contains(name) ? plainState[name] * 0.9 : plainState[name];
            Assert.True(value.allclose(expected, rtol: 1e-5, atol: 1e-8), name);
        }
        Assert.False(b.state_dict()[weightNames.First()].allclose(plainState[weightNames.First()]));

        // And the run says so, records it, and a resume that does not name it keeps it
        Assert.Contains("cosine-annealed over epochs 1-1, decoupled weight decay 50;", setup!.Describe(), StringComparison.Ordinal);
        Assert.Equal(50, header.WeightDecay);
        Assert.Equal(0, Checkpoint.ReadHeader(plain.CheckpointPath).WeightDecay);
        var resumed = Trainer.Train(options with { Out = dir.File("decayed.bnn"), Epochs = 2, Resume = decayed.CheckpointPath });
        Assert.Equal(50, Checkpoint.ReadHeader(resumed.CheckpointPath).WeightDecay);
        Assert.Throws<BnnDataException>(() => Trainer.Train(options with { Out = dir.File("bad.bnn"), WeightDecay = -1 }));
    }

    [Fact]
    public void Bf16Teacher_GivesFloat32LogitsWithinBfloat16RoundingOfTheFloat32Teachers()
    {
        // Given a float twin trained briefly, loaded once as is and once in bfloat16
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 44, seed: 13, batches: 2);
        var teacher = Trainer.Train(options with { Float = true, Out = dir.File("teacher.bnn") });
        using var exact = new Distillation([teacher.BestCheckpointPath], 0.5, 4, channelsLast: true, bf16: false);
        using var rounded = new Distillation([teacher.BestCheckpointPath], 0.5, 4, channelsLast: true, bf16: true);

        // When both score the same pixel codes
        using var scope = NewDisposeScope();
        manual_seed(5);
        var x = randint(0, 256, [8, 3, 32, 32]).to(float32);
        var a = exact.TeacherLogits(x);
        var b = rounded.TeacherLogits(x);

        // Then the bfloat16 teacher hands back float32 logits that differ (it did round) by a few percent at most
        Assert.Equal(ScalarType.Float32, b.dtype);
        float error = (a - b).abs().max().item<float>();
        float scale = a.abs().max().item<float>();
        Assert.InRange(error, 1e-6f * scale, 0.05f * scale);
        Assert.False(a.requires_grad || b.requires_grad);
    }

    [Fact]
    public void Ensemble_TeachesTheMeanOfItsMembersSoftenedPredictions_AndReportsEachMembersValidationAccuracy()
    {
        // Given two float teachers of different architectures
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 45, seed: 14, batches: 2) with { Bf16BinaryConvs = false };
        var twin = Trainer.Train(options with { Float = true, Out = dir.File("twin.bnn") });
        var airbench = Trainer.Train(options with { Arch = "airbench", Float = true, Out = dir.File("airbench.bnn") });
        string[] both = [twin.BestCheckpointPath, airbench.BestCheckpointPath];

        // When they teach as an ensemble at T = 3
        using var ensemble = new Distillation(both, 0.5, 3, channelsLast: true, bf16: false);
        using var alone = new Distillation([airbench.BestCheckpointPath], 0.5, 3, channelsLast: true, bf16: false);
        using (var scope = NewDisposeScope())
        {
            manual_seed(8);
            var x = randint(0, 256, [6, 3, 32, 32]).to(float32);

            // Then the target is log((softmax(t₁/3) + softmax(t₂/3)) / 2), and one teacher's is its own log-softmax
            var mean = ((ensemble.TeacherLogits(x, 0) / 3).softmax(1) + (ensemble.TeacherLogits(x, 1) / 3).softmax(1)) / 2;
            Assert.True(ensemble.TargetLogProbabilities(x).allclose(mean.log(), rtol: 1e-5, atol: 1e-6));
            Assert.True(alone.TargetLogProbabilities(x).eq((alone.TeacherLogits(x) / 3).log_softmax(1)).all().item<bool>());
        }

        // And each member's accuracy is its eval-mode accuracy on the set, the ensemble's that of its target's argmax
        var validation = Datasets.HoldOut(Datasets.Load("cifar10", dir.Path, "train"), options.ValidationCount).Validation;
        var accuracy = ensemble.Accuracy(validation);
        for (int i = 0; i < both.Length; i++)
        {
            using var teacher = Exporter.LoadNetwork(both[i], channelsLast: true);
            Assert.Equal(Trainer.Evaluate(teacher, validation).Accuracy, accuracy.Each[i], 12);
        }
        Assert.InRange(accuracy.Together, 0, 1);

        // When a student distills from the ensemble, then resumes without naming it
        var setups = new List<TrainSetup>();
        var student = Trainer.Train(options with { Out = dir.File("taught.bnn"), Teachers = both }, started: setups.Add);
        var resumed = Trainer.Train(options with { Out = dir.File("taught.bnn"), Epochs = 2, Resume = student.CheckpointPath }, started: setups.Add);
        var single = Trainer.Train(options with { Out = dir.File("single.bnn"), Teachers = [airbench.BestCheckpointPath] });

        // Then both runs name both teachers with their accuracies, the checkpoint records them, and the ensemble
        // taught differently from its member alone
        Assert.All(setups, s => Assert.Equal(both, s.Teachers));
        Assert.All(setups, s => Assert.Equal(accuracy.Each, s.TeacherAccuracy!.Each));
        Assert.All(setups, s => Assert.Equal(accuracy.Together, s.TeacherAccuracy!.Together));
        Assert.Contains(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"distilling from {both[0]} (validation {accuracy.Each[0]:P2}) and {both[1]} (validation {accuracy.Each[1]:P2}), their mean {accuracy.Together:P2}"),
            setups[0].Describe(), StringComparison.Ordinal);
        Assert.Equal(both, Checkpoint.ReadHeader(resumed.CheckpointPath).Teachers);
        Assert.NotEqual(single.History[0].TrainLoss, student.History[0].TrainLoss);
    }

    [Fact]
    public void Train_RefusesATeacherOfAnotherDataset_AndTheSameTeacherTwice()
    {
        // Given a float teacher trained on SVHN images with CIFAR-10's ten classes
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 46, seed: 15, batches: 1) with { Bf16BinaryConvs = false };
        File.WriteAllBytes(dir.File("train_32x32.mat"), Bnn.Tests.Data.MatWriter.Svhn(Datasets.Load("cifar10", dir.Path, "train"), compress: false));
        var svhn = Trainer.Train(options with { Dataset = "svhn", Float = true, Out = dir.File("svhn.bnn") });

        // Then a CIFAR-10 student refuses it, saying what it is
        var error = Assert.Throws<BnnDataException>(() => Trainer.Train(options with { Teachers = [svhn.BestCheckpointPath] }));
        Assert.Contains("trained on cifar10 (10 classes); it is a float network (cnv ×0.125) trained on svhn (10 classes)", error.Message, StringComparison.Ordinal);

        // And the command line refuses one teacher named twice
        var (code, _, stderr) = Bnn.Tests.Cli.CliRunner.Run("train", "--arch", "cnv", "--dataset", "cifar10", "--data", dir.Path, "--epochs", "1",
            "--out", dir.File("twice.bnn"), "--teacher", svhn.BestCheckpointPath, "--teacher", svhn.BestCheckpointPath);
        Assert.Equal(Bnn.Cli.BnnApp.UsageError, code);
        Assert.Contains("named twice", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Train_RefusesABinaryNetworkAsTeacher()
    {
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 43, seed: 12, batches: 1);
        var binary = Trainer.Train(options with { Out = dir.File("binary.bnn") });

        var error = Assert.Throws<BnnDataException>(() => Trainer.Train(options with { Teachers = [binary.CheckpointPath] }));
        Assert.Contains("must be a float network", error.Message, StringComparison.Ordinal);
        Assert.Contains("it is a binary network (cnv ×0.125)", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Train_DistillsFromAFloatTeacherOfAnotherArchitecture_WhoseLogitsEnterTheLoss()
    {
        // Given a float airbench teacher and a CNV student
        using var dir = new TempDirectory();
        var options = TrainingTests.TinyCnv(dir, perBatch: 100, dataSeed: 44, seed: 13, batches: 2) with { Bf16BinaryConvs = false };
        var teacher = Trainer.Train(options with { Arch = "airbench", Float = true, Out = dir.File("teacher.bnn") });
        Assert.Equal("airbench", Checkpoint.ReadHeader(teacher.BestCheckpointPath).Arch);

        // When the student trains with and without it (same seed, same batches)
        var alone = Trainer.Train(options with { Out = dir.File("alone.bnn") });
        TrainSetup? setup = null;
        var taught = Trainer.Train(options with { Out = dir.File("taught.bnn"), Teachers = [teacher.BestCheckpointPath], DistillWeight = 0.9 },
            started: s => setup = s);

        // Then the run names its teacher and records it, and the teacher changed what the student learned
        Assert.Equal([teacher.BestCheckpointPath], setup!.Teachers);
        Assert.Equal([teacher.BestCheckpointPath], Checkpoint.ReadHeader(taught.CheckpointPath).Teachers);
        Assert.NotEqual(alone.History[0].TrainLoss, taught.History[0].TrainLoss);
        Assert.NotEqual(File.ReadAllBytes(dir.File("alone.bnn")), File.ReadAllBytes(dir.File("taught.bnn")));
    }
}
