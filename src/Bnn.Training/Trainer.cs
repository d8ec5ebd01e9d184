using System.Diagnostics;
using System.Globalization;
using System.Text;
using Bnn.Data;
using Bnn.Engine;
using Bnn.IO;
using Bnn.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>The outcome of a training run.</summary>
public sealed record TrainResult(string CheckpointPath, string BestCheckpointPath, string LogPath, IReadOnlyList<EpochRecord> History, int BestEpoch);

/// <summary>
/// BinaryNet-style training: sign activations and weights with straight-through gradients, latent weights clipped to
/// [−1, 1], batch norm after every binary layer, Adam with cosine learning-rate annealing, cross-entropy loss on the
/// integer scores times a learned temperature. Cross-entropy rather than BinaryNet's squared hinge because it trains
/// faster with Adam and is what later BNN work (XNOR-Net, Bi-Real, Brevitas' CNV) uses.
/// </summary>
public static class Trainer
{
    private const int GcEverySteps = 50;
    private const int EvalBatch = 500;

    /// <summary>Paths of the latest and best checkpoints and the CSV log for a model output path.</summary>
    public static (string Latest, string Best, string Log) CompanionPaths(string modelPath)
    {
        var stem = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(modelPath)) ?? ".", Path.GetFileNameWithoutExtension(modelPath));
        return (stem + ".ckpt", stem + ".best.ckpt", stem + ".train.csv");
    }

    /// <summary>Where <see cref="TrainOptions.KeepEpochCheckpoints"/> keeps one epoch's weights.</summary>
    public static string EpochCheckpointPath(string modelPath, int epoch) =>
        Path.ChangeExtension(CompanionPaths(modelPath).Latest, string.Create(CultureInfo.InvariantCulture, $"epoch{epoch:D3}.ckpt"));

    /// <summary>Runs (or resumes) training, checkpointing after every epoch.</summary>
    /// <param name="options">What to train.</param>
    /// <param name="progress">Receives a report after every batch.</param>
    /// <param name="cancel">Stops the run before its next epoch.</param>
    /// <param name="started">Receives the run's setup once data, checkpoint and teacher are loaded, before the first epoch.</param>
    public static TrainResult Train(
        TrainOptions options, IProgress<TrainProgress>? progress = null, CancellationToken cancel = default, Action<TrainSetup>? started = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Epochs < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "epochs must be ≥ 0");
        }
        if (options.Threads > 0)
        {
            torch.set_num_threads(options.Threads);
        }
        var (latestPath, bestPath, logPath) = CompanionPaths(options.Out);
        Directory.CreateDirectory(Path.GetDirectoryName(latestPath)!);

        CheckpointHeader? resumed = options.Resume is null ? null : Checkpoint.ReadHeader(options.Resume);
        // Checked before the dataset loads, so a resume that cannot end in an export fails at once.
        if (resumed is not null && resumed.BestEpoch > 0 && !File.Exists(bestPath))
        {
            if (resumed.Packed)
            {
                CheckpointPack.ExtractBest(options.Resume!, bestPath);
            }
            else
            {
                CarryBestCheckpoint(options.Resume!, resumed.BestEpoch, bestPath);
            }
        }
        // Given teachers replace a resumed run's (one that moved, or a new ensemble); otherwise the run keeps its own.
        IReadOnlyList<string> teacherPaths = options.Teachers.Count > 0 ? [.. options.Teachers.Select(Path.GetFullPath)] : resumed?.TeacherPaths ?? [];
        if (options.Teachers.Count == 0 && teacherPaths.FirstOrDefault(t => !File.Exists(t)) is string gone)
        {
            throw new BnnDataException(
                $"{options.Resume}: the run distilled from {gone}, which is not there (a checkpoint records its teachers' full paths); pass --teacher with each of its teachers");
        }
        var arch = resumed?.Arch ?? options.Arch;
        var width = resumed?.Width ?? options.Width;
        int seed = resumed?.Seed ?? options.Seed;
        // On resume, --epochs sets the new total; the cosine schedule is recomputed for it from the next epoch on, or
        // with --restart-lr a new cycle starts at the resumed epoch.
        int epochs = options.Epochs;
        double lr0 = resumed?.LearningRate ?? options.LearningRate;
        int cycleStart = resumed?.CycleStart ?? 0;
        if (options.RestartLearningRate is double restartLr)
        {
            if (resumed is null || epochs <= resumed.CompletedEpochs || !(restartLr > 0))
            {
                throw new BnnDataException(
                    $"a new learning-rate cycle needs a resumed run, more epochs than it has completed ({resumed?.CompletedEpochs ?? 0}) and a learning rate > 0 ({restartLr})");
            }
            lr0 = restartLr;
            cycleStart = resumed.CompletedEpochs;
        }
        var augmentation = options.Augmentation ?? resumed?.TrainingAugmentation ?? TrainOptions.DefaultAugmentation(options.Dataset);
        int batchSize = resumed?.BatchSize ?? options.BatchSize;
        double weightDecay = options.WeightDecay ?? resumed?.WeightDecay ?? 0;
        if (!(weightDecay >= 0 && double.IsFinite(weightDecay)))
        {
            throw new BnnDataException($"weight decay must be finite and ≥ 0 ({weightDecay})");
        }

        var all = Datasets.Load(options.Dataset, options.DataDir, "train");
        if (options.TrainLimit is int limit)
        {
            all = all.Take(limit);
        }
        var (train, validation) = Datasets.HoldOut(all, resumed?.ValidationCount ?? options.ValidationCount);
        int valCount = validation.Count;

        torch.manual_seed(seed);
        if (resumed is not null && options.Float && !resumed.Float)
        {
            throw new BnnDataException($"{options.Resume} is a binary network's checkpoint; --float cannot resume it");
        }
        bool isFloat = resumed?.Float ?? options.Float;
        if (isFloat && teacherPaths.Count > 0)
        {
            throw new BnnDataException("a float twin is the teacher; it does not distill from one (--float with --teacher)");
        }
        // Layout and precision change only speed and rounding, but a resumed run keeps them unless told otherwise, so
        // that its epochs stay comparable.
        bool channelsLast = options.ChannelsLast ?? resumed?.ChannelsLast ?? true;
        var (bf16, bf16Choice) = TrainOptions.ResolveBf16(options.Bf16BinaryConvs, resumed?.Bf16BinaryConvs, TrainOptions.CpuHasBf16DotProducts);
        bool poolBeforeNorm = options.PoolBeforeNorm ?? resumed?.PoolBeforeNorm ?? false;
        using var net = new BinaryNetwork(Architectures.Build(arch, width, all.Classes), channelsLast: channelsLast,
            bf16Convs: bf16, binarized: !isFloat, poolBeforeNorm: poolBeforeNorm);
        // As with the learning rate, a resumed run keeps the distillation settings it started with.
        using var distillation = teacherPaths.Count == 0 ? null : OpenTeachers(teacherPaths, options.Dataset, all.Classes,
            resumed?.DistillWeight ?? options.DistillWeight, resumed?.DistillTemperature ?? options.DistillTemperature, channelsLast, bf16);
        // Measured at every start, so that the log says how far above the student its teachers stand.
        var teacherAccuracy = distillation?.Accuracy(validation);
        var optimizer = optim.Adam(net.parameters(), lr0);
        if (resumed is not null)
        {
            Checkpoint.ReadState(options.Resume!, net, optimizer);
        }
        // A run of the other order converts; back from this order nothing needs to change, since its γ ≥ 0 already
        // makes both orders compute the same.
        int? flipped = null;
        if (resumed is not null && poolBeforeNorm && resumed.PoolBeforeNorm != true && !isFloat)
        {
            flipped = net.MovePoolsBeforeNorm(optimizer);
            net.RenormalizePooledStages(measure =>
                ForEachAugmentedBatch(train, RenormalizationImages, augmentation, seed, stream: 3, (_, x) => measure(x)));
        }
        int batches = train.Count / batchSize;
        if (options.MaxBatchesPerEpoch is int cap)
        {
            batches = Math.Min(batches, cap);
        }
        if (batches == 0)
        {
            throw new BnnDataException($"{options.DataDir}: {train.Count} training records are fewer than one batch of {batchSize}");
        }
        started?.Invoke(new TrainSetup(
            arch, width, isFloat, options.Dataset, train.Count, valCount, batchSize, resumed?.CompletedEpochs ?? 0, epochs, lr0, cycleStart,
            augmentation, net.ChannelsLast, net.Bf16Convs, teacherPaths, distillation?.Weight, distillation?.Temperature,
            distillation?.InBf16 ?? false, resumed is null ? null : TrainSetup.OptimizerResume(resumed.Packed, resumed.HasOptimizerState), weightDecay,
            teacherAccuracy, poolBeforeNorm, flipped));
        var wall = Stopwatch.StartNew();

        var history = new List<EpochRecord>(resumed?.History ?? []);
        int bestEpoch = resumed?.BestEpoch ?? -1;
        double bestAccuracy = resumed?.BestValidationAccuracy ?? double.NegativeInfinity;
        double wallBefore = history.Count > 0 ? history[^1].WallSeconds : 0;

        for (int epoch = resumed?.CompletedEpochs ?? 0; epoch < epochs; epoch++)
        {
            cancel.ThrowIfCancellationRequested();
            var epochClock = Stopwatch.StartNew();
            double lr = CosineLearningRate(lr0, epoch - cycleStart, epochs - cycleStart);
            foreach (var group in optimizer.ParamGroups)
            {
                group.LearningRate = lr;
            }
            var rng = new Random(EpochSeed(seed, epoch, stream: 0));
            double keep = 1 - (lr * weightDecay);
            Action? decay = weightDecay > 0 ? () => net.ScaleWeights(keep) : null;
            var (trainLoss, trainAccuracy) = TrainEpoch(net, optimizer, train, batchSize, batches, Augmenter.For(augmentation, rng), rng, decay, distillation,
                progress is null ? null : (b, loss, accuracy) =>
                {
                    double done = (b + 1.0) / batches;
                    var eta = TimeSpan.FromSeconds(epochClock.Elapsed.TotalSeconds / done * (1 - done + (epochs - epoch - 1)));
                    progress.Report(new TrainProgress(epoch + 1, epochs, b + 1, batches, loss, accuracy, eta));
                });
            var (valLoss, valAccuracy) = Validate(net, validation, options.Threads);
            var record = new EpochRecord(
                epoch + 1, trainLoss, trainAccuracy, valLoss, valAccuracy, lr,
                epochClock.Elapsed.TotalSeconds, wallBefore + wall.Elapsed.TotalSeconds,
                Process.GetCurrentProcess().PeakWorkingSet64 / (1024.0 * 1024.0));
            history.Add(record);
            var header = new CheckpointHeader
            {
                Arch = arch, Width = width, Dataset = options.Dataset, Classes = all.Classes, BinaryPadValue = 1,
                Seed = seed, Epochs = epochs, LearningRate = lr0, BatchSize = batchSize, ValidationCount = valCount,
                CompletedEpochs = epoch + 1, BestEpoch = bestEpoch, BestValidationAccuracy = bestAccuracy,
                History = history, HasOptimizerState = true, Float = isFloat, Teachers = teacherPaths.Count > 0 ? teacherPaths : null,
                DistillWeight = distillation?.Weight, DistillTemperature = distillation?.Temperature,
                CycleStart = cycleStart, Augmentation = augmentation, ChannelsLast = net.ChannelsLast, Bf16BinaryConvs = bf16Choice,
                WeightDecay = weightDecay, PoolBeforeNorm = poolBeforeNorm,
            };
            if (valAccuracy > bestAccuracy)
            {
                bestAccuracy = valAccuracy;
                bestEpoch = epoch + 1;
                header = header with { BestEpoch = bestEpoch, BestValidationAccuracy = bestAccuracy };
                Checkpoint.Write(bestPath, header, net, null);
            }
            Checkpoint.Write(latestPath, header, net, optimizer);
            if (options.KeepEpochCheckpoints)
            {
                Checkpoint.Write(EpochCheckpointPath(options.Out, epoch + 1), header, net, null);
            }
            WriteLog(logPath, history);
        }
        if (bestEpoch > 0 && !isFloat)
        {
            // Model selection on the validation split: the exported model is the best epoch's, not the last one's.
            ModelFile.Save(Exporter.FromCheckpoint(bestPath), options.Out);
        }
        return new TrainResult(latestPath, bestPath, logPath, history, bestEpoch);
    }

    /// <summary>The cosine-annealed learning rate of epoch <paramref name="epoch"/> (from 0) of a <paramref name="epochs"/>-epoch cycle.</summary>
    internal static double CosineLearningRate(double initial, int epoch, int epochs) => 0.5 * initial * (1 + Math.Cos(Math.PI * epoch / epochs));

    /// <summary>
    /// A run resumed into a new --out must bring its best epoch's weights along: the best is only rewritten when a new
    /// epoch beats it, so otherwise a run whose new epochs never did would end with no model to export.
    /// </summary>
    private static void CarryBestCheckpoint(string resumedFrom, int bestEpoch, string bestPath)
    {
        var source = CompanionPaths(resumedFrom).Best;
        if (!File.Exists(source) || Checkpoint.ReadHeader(source).CompletedEpochs != bestEpoch)
        {
            throw new BnnDataException(
                $"{resumedFrom}: its best epoch ({bestEpoch}) is not in {source}; put that epoch's checkpoint at {bestPath} to resume into this --out");
        }
        // Atomic, as every checkpoint write: a run killed mid-copy must not leave a torn best behind.
        AtomicFile.Copy(source, bestPath);
    }

    /// <summary>
    /// Any float network trained on the student's dataset can teach it: the teachers' logits are all the loss uses. The
    /// student's own float twin is the obvious one; a cheaper net that fits the data better (<c>airbench</c>) may teach
    /// better, and an ensemble of different ones better still.
    /// </summary>
    private static Distillation OpenTeachers(IReadOnlyList<string> paths, string dataset, int classes, double weight, double temperature, bool channelsLast, bool bf16)
    {
        foreach (var path in paths)
        {
            var header = Checkpoint.ReadHeader(path);
            if (!header.Float || header.Classes != classes || header.Dataset != dataset)
            {
                throw new BnnDataException(
                    $"{path}: a teacher must be a float network (`bnn train --float`) trained on {dataset} ({classes} classes); it is " +
                    $"{(header.Float ? "a float network" : "a binary network")} ({header.Arch} ×{header.Width}) trained on {header.Dataset} ({header.Classes} classes)");
            }
        }
        return new Distillation(paths, weight, temperature, channelsLast, bf16);
    }

    /// <summary>How many training images a run converted to pooling before batch norm measures its pooled sums on.</summary>
    internal const int RenormalizationImages = 10_000;

    /// <summary>
    /// The seed of one epoch's shuffle and augmentation. <see cref="HashCode.Combine{T1,T2}"/> would be shorter, but it
    /// is salted per process, so a resumed or repeated run would draw different batches; this SplitMix64 mix is not.
    /// </summary>
    internal static int EpochSeed(int seed, int epoch, int stream)
    {
        ulong z = ((ulong)(uint)seed << 32 | (uint)epoch) + (0x9E3779B97F4A7C15UL * (ulong)(stream + 1));
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return (int)(z ^ (z >> 31));
    }

    /// <summary>
    /// One epoch of training over a shuffled <paramref name="train"/>: per step a dispose scope, the latent-weight clip
    /// and then <paramref name="afterStep"/> (weight decay, or the fine-tuner's weight tying); a collection every 50 steps keeps RSS
    /// flat. Returns the mean loss and accuracy over the epoch.
    /// </summary>
    internal static (double Loss, double Accuracy) TrainEpoch(BinaryNetwork net, optim.Optimizer optimizer, ImageSet train, int batchSize,
        int batches, Augmenter? augment, Random shuffle, Action? afterStep, Distillation? distillation, Action<int, double, double>? report)
    {
        var order = Enumerable.Range(0, train.Count).ToArray();
        shuffle.Shuffle(order);
        var input = new float[batchSize * train.ImageSize];
        var labels = new long[batchSize];
        double lossSum = 0;
        long correct = 0;
        net.train();
        for (int b = 0; b < batches; b++)
        {
            using var scope = torch.NewDisposeScope();
            FillBatch(train, order.AsSpan(b * batchSize, batchSize), augment, input, labels);
            using var x = tensor(input, [batchSize, train.Channels, train.Height, train.Width]);
            using var y = tensor(labels);
            var logits = net.forward(x);
            var loss = distillation?.Loss(x, logits, y) ?? nn.functional.cross_entropy(logits, y);
            optimizer.zero_grad();
            loss.backward();
            optimizer.step();
            net.ClipAfterStep();
            afterStep?.Invoke();
            lossSum += loss.item<float>();
            correct += logits.argmax(1).eq(y).sum().item<long>();
            if (b % GcEverySteps == GcEverySteps - 1)
            {
                // Tensors left to finalizers keep native memory alive; an explicit collection keeps RSS flat.
                GC.Collect();
            }
            report?.Invoke(b, lossSum / (b + 1), (double)correct / ((b + 1) * batchSize));
        }
        return (lossSum / batches, (double)correct / (batches * batchSize));
    }

    /// <summary>
    /// Predictions of the network's eval-mode forward in <paramref name="dtype"/> (float32 as trained, or float64
    /// where batch norm's arithmetic is exact enough to compare with the folded integer thresholds).
    /// </summary>
    internal static int[] Predict(BinaryNetwork net, ImageSet set, ScalarType dtype)
    {
        net.eval();
        net.to(dtype);
        try
        {
            using var _ = no_grad();
            var predictions = new int[set.Count];
            ForEachEvalBatch(set, (start, x, _) =>
            {
                var p = net.forward(x.to(dtype)).argmax(1).data<long>().ToArray();
                for (int i = 0; i < p.Length; i++)
                {
                    predictions[start + i] = (int)p[i];
                }
            });
            return predictions;
        }
        finally
        {
            net.to(float32);
        }
    }

    /// <summary>
    /// Mean cross-entropy and accuracy of the eval-mode network. A binary network is exported and run in the packed
    /// engine, whose integer scores are those of TorchSharp's eval-mode forward bit for bit (the fidelity tests and
    /// <c>bnn fidelity</c> check exactly this): BinaryNet-VGG's 5,000 validation images took 55 s in TorchSharp's
    /// float32 forward, 8 % of an epoch, and take a few seconds in the engine. The loss is the cross-entropy of the
    /// scores times the learned temperature, in float64 (TorchSharp's is float32: the two differ in the last digits).
    /// A float twin has no packed form and is evaluated by <see cref="Evaluate"/>.
    /// </summary>
    internal static (double Loss, double Accuracy) Validate(BinaryNetwork net, ImageSet set, int threads = 0)
    {
        if (!net.Binarized || set.Count == 0)
        {
            return Evaluate(net, set);
        }
        var model = Exporter.ToModel(net, "the network in training", set.Channels, set.Height, set.Width);
        var (scores, predictions) = new PackedEngine(model).Run(set, threads > 0 ? threads : Environment.ProcessorCount);
        double temperature = Math.Exp(net.Stages.OfType<BinaryNetwork.OutputStage>().Single().LogScale.item<float>());
        int classes = model.Classes;
        double lossSum = 0;
        for (int i = 0; i < set.Count; i++)
        {
            var row = scores.AsSpan(i * classes, classes);
            int top = row[predictions[i]];
            double sum = 0;
            foreach (int score in row)
            {
                sum += Math.Exp((score - top) * temperature);
            }
            // log Σ exp(t·s_j) − t·s_label, shifted by the largest score for range.
            lossSum += Math.Log(sum) - ((row[set.Labels[i]] - top) * temperature);
        }
        return (lossSum / set.Count, EngineExtensions.Accuracy(predictions, set));
    }

    /// <summary>Mean cross-entropy and accuracy of TorchSharp's eval-mode forward (batch-norm running statistics).</summary>
    internal static (double Loss, double Accuracy) Evaluate(BinaryNetwork net, ImageSet set)
    {
        if (set.Count == 0)
        {
            return (double.NaN, double.NaN);
        }
        net.eval();
        using var _ = no_grad();
        double lossSum = 0;
        long correct = 0;
        ForEachEvalBatch(set, (_, x, y) =>
        {
            var logits = net.forward(x);
            lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
            correct += logits.argmax(1).eq(y).sum().item<long>();
        });
        return (lossSum / set.Count, (double)correct / set.Count);
    }

    /// <summary>
    /// Runs <paramref name="body"/> on <paramref name="set"/> in order, in batches of pixel codes and labels (with the
    /// index of the batch's first image), each in its own dispose scope (the tensors do not outlive the call).
    /// </summary>
    internal static void ForEachEvalBatch(ImageSet set, Action<int, Tensor, Tensor> body)
    {
        for (int start = 0; start < set.Count; start += EvalBatch)
        {
            using var scope = torch.NewDisposeScope();
            int n = Math.Min(EvalBatch, set.Count - start);
            var input = new float[n * set.ImageSize];
            var labels = new long[n];
            FillBatch(set, Enumerable.Range(start, n).ToArray(), null, input, labels);
            body(start, tensor(input, [n, set.Channels, set.Height, set.Width]), tensor(labels));
        }
    }

    /// <summary>
    /// Runs <paramref name="body"/> (start, batch) under a dispose scope over <paramref name="count"/> shuffled training
    /// images, augmented as in training, in batches of 100: statistics of the batches training normalizes by.
    /// <paramref name="stream"/> keeps each use's draws apart from the epochs'.
    /// </summary>
    internal static void ForEachAugmentedBatch(ImageSet train, int count, Augmentation augmentation, int seed, int stream, Action<int, Tensor> body)
    {
        const int BatchSize = 100;
        var rng = new Random(EpochSeed(seed, 0, stream));
        var order = Enumerable.Range(0, train.Count).ToArray();
        rng.Shuffle(order);
        var augment = Augmenter.For(augmentation, rng);
        var input = new float[BatchSize * train.ImageSize];
        var labels = new long[BatchSize];
        int total = Math.Min(count, train.Count);
        for (int start = 0; start < total; start += BatchSize)
        {
            using var scope = torch.NewDisposeScope();
            int n = Math.Min(BatchSize, total - start);
            FillBatch(train, order.AsSpan(start, n), augment, input, labels);
            body(start, tensor(input.AsSpan(0, n * train.ImageSize).ToArray(), [n, train.Channels, train.Height, train.Width]));
        }
    }

    /// <summary>
    /// Writes pixel codes (<see cref="PixelCode"/>) for the chosen images, augmented as <paramref name="augment"/> draws
    /// (a crop's padding holds code 0, mid-grey); null writes them as stored.
    /// </summary>
    internal static void FillBatch(ImageSet set, ReadOnlySpan<int> indices, Augmenter? augment, float[] input, long[] labels)
    {
        int c = set.Channels, h = set.Height, w = set.Width;
        for (int i = 0; i < indices.Length; i++)
        {
            var image = set.Image(indices[i]);
            labels[i] = set.Labels[indices[i]];
            var (dy, dx, flip) = augment?.Next() ?? (0, 0, false);
            var dst = input.AsSpan(i * set.ImageSize, set.ImageSize);
            for (int ch = 0; ch < c; ch++)
            {
                for (int y = 0; y < h; y++)
                {
                    int sy = y + dy;
                    for (int x = 0; x < w; x++)
                    {
                        int sx = (flip ? w - 1 - x : x) + dx;
                        dst[(ch * h * w) + (y * w) + x] = sy < 0 || sy >= h || sx < 0 || sx >= w
                            ? 0f
                            : PixelCode.Encode(image[(ch * h * w) + (sy * w) + sx]);
                    }
                }
            }
        }
    }

    private static void WriteLog(string path, IReadOnlyList<EpochRecord> history)
    {
        var sb = new StringBuilder("epoch,train_loss,train_accuracy,validation_loss,validation_accuracy,learning_rate,epoch_seconds,wall_seconds,peak_rss_mb\n");
        foreach (var r in history)
        {
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Epoch},{r.TrainLoss:F5},{r.TrainAccuracy:F5},{r.ValidationLoss:F5},{r.ValidationAccuracy:F5},{r.LearningRate:G6},{r.EpochSeconds:F1},{r.WallSeconds:F1},{r.PeakRssMb:F0}"));
        }
        AtomicFile.WriteAllText(path, sb.ToString());
    }
}
