using System.Diagnostics;
using Bnn.Data;
using Bnn.Engine;
using Bnn.Model;
using Bnn.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>What sharing-aware fine-tuning did.</summary>
public sealed record FineTuneResult(BnnModel Model, IReadOnlyList<EpochRecord> History, double ValidationBefore, double ValidationAfter, int BestEpoch);

/// <summary>
/// Sharing-aware fine-tuning: continues training from the checkpoint that produced a model, with every 2-D filter
/// tied to the class it has in a merged model. Within input channel c, the 2-D filters of one class (equal or negated
/// codes) share one latent 3x3 filter: after every optimizer step each member's latent becomes s·mean(s'·w') over
/// the class (s the member's sign). So sign(latent) keeps every class equal up to sign, the number of distinct 2-D
/// filters per channel never grows, and the merge-only saving of the approximate plan survives training while the
/// representatives themselves, the other layers and batch norm move to recover accuracy. This is projected gradient
/// descent on the tying constraint (equivalently, one shared parameter per class with the members' gradients summed).
/// </summary>
public static class SharingFineTuner
{
    /// <summary>Fine-tunes and returns the best-validation model (epoch 0 is the merged model itself).</summary>
    public static FineTuneResult Run(string checkpointPath, BnnModel original, BnnModel merged, ImageSet train, ImageSet validation,
        int epochs, double learningRate = 2e-4, int threads = 0, int seed = 1, IProgress<string>? log = null, int? maxBatchesPerEpoch = null)
    {
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(merged);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(validation);
        ArgumentOutOfRangeException.ThrowIfNegative(epochs);
        if (threads > 0)
        {
            torch.set_num_threads(threads);
        }
        var header = Checkpoint.ReadHeader(checkpointPath);
        using var net = Exporter.LoadNetwork(checkpointPath);
        CheckSameModel(Exporter.ToModel(net, checkpointPath), original, checkpointPath);
        var ties = Ties(net, merged);
        foreach (var tie in ties)
        {
            tie.Initialize();
        }
        var start = Exporter.ToModel(net, checkpointPath);
        CheckSameModel(start, merged, "the tied network");

        double before = EngineExtensions.Accuracy(new PackedEngine(merged).Run(validation, Math.Max(threads, 1)).Predictions, validation);
        var best = merged;
        double bestAccuracy = before;
        int bestEpoch = 0;
        var history = new List<EpochRecord>();
        torch.manual_seed(seed);
        var optimizer = optim.Adam(net.parameters(), learningRate);
        int batchSize = header.BatchSize;
        int batches = Math.Min(train.Count / batchSize, maxBatchesPerEpoch ?? int.MaxValue);
        if (batches == 0)
        {
            throw new BnnDataException($"{train.Count} training records are fewer than one batch of {batchSize}");
        }
        var wall = Stopwatch.StartNew();
        for (int epoch = 0; epoch < epochs; epoch++)
        {
            var clock = Stopwatch.StartNew();
            double lr = Trainer.CosineLearningRate(learningRate, epoch, epochs);
            foreach (var group in optimizer.ParamGroups)
            {
                group.LearningRate = lr;
            }
            var rng = new Random(Trainer.EpochSeed(seed, epoch, stream: 1));
            var (loss, accuracy) = Trainer.TrainEpoch(net, optimizer, train, batchSize, batches, Augmenter.For(header.TrainingAugmentation, rng), rng,
                () =>
                {
                    foreach (var tie in ties)
                    {
                        tie.Project();
                    }
                }, null, null);
            var model = Exporter.ToModel(net, checkpointPath);
            foreach (var tie in ties)
            {
                tie.Verify(model);
            }
            double valAccuracy = EngineExtensions.Accuracy(new PackedEngine(model).Run(validation, Math.Max(threads, 1)).Predictions, validation);
            history.Add(new EpochRecord(epoch + 1, loss, accuracy, double.NaN, valAccuracy, lr, clock.Elapsed.TotalSeconds, wall.Elapsed.TotalSeconds,
                Process.GetCurrentProcess().PeakWorkingSet64 / (1024.0 * 1024.0)));
            log?.Report(FormattableString.Invariant($"fine-tune epoch {epoch + 1}/{epochs}: loss {loss:F4}, train {accuracy:P2}, validation {valAccuracy:P2} ({clock.Elapsed.TotalSeconds:F0} s)"));
            if (valAccuracy > bestAccuracy)
            {
                (best, bestAccuracy, bestEpoch) = (model, valAccuracy, epoch + 1);
            }
        }
        return new FineTuneResult(best, history, before, bestAccuracy, bestEpoch);
    }

    private static void CheckSameModel(BnnModel actual, BnnModel expected, string what)
    {
        var a = actual.ConvLayers.ToList();
        var e = expected.ConvLayers.ToList();
        if (a.Count != e.Count || actual.Layers.Count != expected.Layers.Count
            || a.Zip(e).Any(p => !p.First.Layer.Weights.AsSpan().SequenceEqual(p.Second.Layer.Weights)))
        {
            throw new BnnDataException($"{what}: its conv weights are not those of the model being fine-tuned (use the checkpoint the model was exported from)");
        }
    }

    private static List<ChannelTie> Ties(BinaryNetwork net, BnnModel merged)
    {
        var convStages = net.Stages.OfType<BinaryNetwork.ConvStage>().ToList();
        var convLayers = merged.ConvLayers.Select(p => p.Layer).ToList();
        return convStages.Zip(convLayers).Select((p, i) => new ChannelTie(p.First, p.Second, i)).ToList();
    }

    /// <summary>The tying of one conv stage's latent weights to the classes of a merged layer.</summary>
    private sealed class ChannelTie
    {
        private readonly BinaryNetwork.ConvStage stage;
        private readonly ConvLayer merged;
        private readonly Tensor groupIndex;   // [K·C] class id of each 2-D filter
        private readonly Tensor memberSign;   // [K·C, 1] ±1: the filter is its class code (+1) or its complement (−1)
        private readonly Tensor classPattern; // [G, n] the class code as ±1 values
        private readonly Tensor classSize;    // [G, 1]
        private readonly long groups;
        private readonly int ordinal;

        public ChannelTie(BinaryNetwork.ConvStage stage, ConvLayer merged, int ordinal)
        {
            this.stage = stage;
            this.ordinal = ordinal;
            this.merged = merged;
            int n = merged.KernelH * merged.KernelW;
            var ids = new Dictionary<(int Channel, int Class), int>();
            var index = new long[merged.OutChannels * merged.InChannels];
            var sign = new float[index.Length];
            var patterns = new List<float>();
            var sizes = new List<float>();
            for (int k = 0; k < merged.OutChannels; k++)
            {
                for (int c = 0; c < merged.InChannels; c++)
                {
                    int f = (k * merged.InChannels) + c;
                    int code = FilterCode.Code(merged, k, c);
                    int cls = FilterCode.Class(code, n);
                    bool negated = code != cls;
                    if (!ids.TryGetValue((c, cls), out int id))
                    {
                        id = ids.Count;
                        ids[(c, cls)] = id;
                        for (int t = 0; t < n; t++)
                        {
                            patterns.Add(((cls >> t) & 1) != 0 ? -1f : 1f);
                        }
                        sizes.Add(0);
                    }
                    index[f] = id;
                    sign[f] = negated ? -1f : 1f;
                    sizes[id]++;
                }
            }
            groups = ids.Count;
            groupIndex = tensor(index);
            memberSign = tensor(sign, [index.Length, 1]);
            classPattern = tensor(patterns.ToArray(), [groups, n]);
            classSize = tensor(sizes.ToArray(), [groups, 1]);
        }

        /// <summary>Sets each class's latent to its code's signs times the class's mean latent magnitude.</summary>
        public void Initialize()
        {
            using var _ = no_grad();
            using var scope = torch.NewDisposeScope();
            var w = Flat();
            var magnitude = zeros(groups, 1).index_add_(0, groupIndex, w.abs().mean([1], keepdim: true), 1) / classSize;
            Assign(classPattern * magnitude.clamp_min(1e-4));
        }

        /// <summary>Projects the latents back onto the tying constraint.</summary>
        public void Project()
        {
            using var _ = no_grad();
            using var scope = torch.NewDisposeScope();
            var oriented = Flat() * memberSign;
            var mean = zeros(groups, oriented.shape[1]).index_add_(0, groupIndex, oriented, 1) / classSize;
            // A latent of exactly 0 would binarize to +1 for a member and its negation alike and break the class.
            Assign(where(mean.eq(0), full_like(mean, 1e-6), mean));
        }

        /// <summary>Checks the exported layer keeps the class structure: all members of a class share one canonical code.</summary>
        public void Verify(BnnModel model)
        {
            var layer = model.ConvLayers.ElementAt(ordinal).Layer;
            int n = layer.KernelH * layer.KernelW;
            var classOf = new Dictionary<long, int>();
            var ids = groupIndex.data<long>().ToArray();
            for (int k = 0; k < layer.OutChannels; k++)
            {
                for (int c = 0; c < layer.InChannels; c++)
                {
                    int f = (k * layer.InChannels) + c;
                    int cls = FilterCode.Class(FilterCode.Code(layer, k, c), n);
                    if (classOf.TryGetValue(ids[f], out int seen) && seen != cls)
                    {
                        throw new InvalidOperationException($"fine-tuning broke the tying of conv {ordinal} filter ({k}, {c})");
                    }
                    classOf[ids[f]] = cls;
                }
            }
        }

        private Tensor Flat() => stage.Weight.reshape(merged.OutChannels * merged.InChannels, merged.KernelH * merged.KernelW);

        private void Assign(Tensor perClass)
        {
            var w = perClass.index_select(0, groupIndex) * memberSign;
            stage.Weight.copy_(w.reshape(stage.Weight.shape));
        }
    }
}
