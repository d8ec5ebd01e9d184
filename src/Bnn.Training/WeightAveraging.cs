using Bnn.Data;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>What <see cref="WeightAveraging.Average"/> produced, with validation accuracies to choose by.</summary>
/// <param name="CheckpointPath">The averaged checkpoint (weights only, no optimizer state).</param>
/// <param name="Inputs">Each input checkpoint's completed epochs and validation accuracy, as stored in it.</param>
/// <param name="AveragedValidationAccuracy">The average with the inputs' batch-norm statistics averaged too.</param>
/// <param name="RecalibratedValidationAccuracy">After re-estimating batch norm on training images; null when skipped.</param>
/// <param name="RecalibrationImages">How many training images batch norm was re-estimated on (0 when skipped).</param>
public sealed record AveragingResult(
    string CheckpointPath, IReadOnlyList<(int Epoch, double ValidationAccuracy)> Inputs,
    double AveragedValidationAccuracy, double? RecalibratedValidationAccuracy, int RecalibrationImages);

/// <summary>
/// Stochastic weight averaging (Izmailov et al., 2018) over checkpoints of one run, followed by precise batch-norm
/// statistics. For a BNN the mean of the latent weights is a vote: each binary weight takes the sign its latent value
/// held on average over the late epochs, not the sign that the last few Adam steps happened to leave.
/// <para>
/// Batch norm's running statistics are an exponential average with momentum 0.1, so they describe roughly the last
/// twenty training batches of an epoch, and they belong to the weights of those batches rather than to the average.
/// Recalibration therefore resets them and accumulates an equal-weight mean of the per-batch statistics over many
/// training images, augmented as in training: the training-mode batch statistics the weights were fitted to are
/// those of augmented images (statistics of un-augmented images measured worse on validation).
/// </para>
/// </summary>
public static class WeightAveraging
{
    /// <summary>
    /// Averages <paramref name="checkpoints"/> (same run: same architecture, width, dataset and validation split)
    /// into <paramref name="outPath"/>. With <paramref name="recalibrationImages"/> &gt; 0 the batch-norm statistics
    /// are then re-estimated on that many shuffled training images (the validation records are never used for it).
    /// </summary>
    public static AveragingResult Average(IReadOnlyList<string> checkpoints, string dataDir, string outPath, int recalibrationImages, int seed = 1)
    {
        ArgumentNullException.ThrowIfNull(checkpoints);
        if (checkpoints.Count == 0)
        {
            throw new ArgumentException("no checkpoints to average", nameof(checkpoints));
        }
        ArgumentOutOfRangeException.ThrowIfNegative(recalibrationImages);
        var headers = checkpoints.Select(Checkpoint.ReadHeader).ToList();
        var first = headers[0];
        for (int i = 1; i < headers.Count; i++)
        {
            var h = headers[i];
            if (h.Arch != first.Arch || h.Width != first.Width || h.Dataset != first.Dataset || h.Classes != first.Classes
                || h.BinaryPadValue != first.BinaryPadValue || h.ValidationCount != first.ValidationCount)
            {
                throw new BnnDataException(
                    $"{checkpoints[i]} is not from the same run as {checkpoints[0]}: " +
                    $"{h.Arch} ×{h.Width} on {h.Dataset} (validation {h.ValidationCount}) against {first.Arch} ×{first.Width} on {first.Dataset} (validation {first.ValidationCount})");
            }
        }

        var (train, validation) = Datasets.HoldOut(Datasets.Load(first.Dataset, dataDir, "train"), first.ValidationCount);
        using var net = Exporter.LoadNetwork(checkpoints[0]);
        AverageInto(net, checkpoints);
        double averaged = Trainer.Validate(net, validation).Accuracy;
        double? recalibrated = null;
        int recalibrationCount = Math.Min(recalibrationImages, train.Count);
        if (recalibrationCount > 0)
        {
            Recalibrate(net, train, recalibrationCount, first.TrainingAugmentation, seed);
            recalibrated = Trainer.Validate(net, validation).Accuracy;
        }
        var last = headers.MaxBy(h => h.CompletedEpochs)!;
        var header = last with
        {
            BestEpoch = last.CompletedEpochs,
            BestValidationAccuracy = recalibrated ?? averaged,
            AveragedEpochs = headers.Select(h => h.CompletedEpochs).ToList(),
            RecalibrationImages = recalibrated is null ? null : recalibrationCount,
        };
        Checkpoint.Write(outPath, header, net, null);
        var inputs = headers.Select(h => (h.CompletedEpochs, h.History.Count > 0 ? h.History[^1].ValidationAccuracy : double.NaN)).ToList();
        return new AveragingResult(outPath, inputs, averaged, recalibrated, recalibrated is null ? 0 : recalibrationCount);
    }

    /// <summary>Sets every floating-point parameter and buffer of <paramref name="net"/> to its mean over the checkpoints.</summary>
    private static void AverageInto(BinaryNetwork net, IReadOnlyList<string> checkpoints)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var target = net.state_dict();
        // Summed in float64 so that the order of many checkpoints does not matter to the last bit of float32.
        var sums = target.Where(kv => kv.Value.is_floating_point()).ToDictionary(kv => kv.Key, kv => zeros_like(kv.Value, dtype: float64));
        foreach (var path in checkpoints)
        {
            using var other = Exporter.LoadNetwork(path);
            foreach (var (name, value) in other.state_dict())
            {
                if (sums.TryGetValue(name, out var sum))
                {
                    sum.add_(value.to_type(float64));
                }
            }
        }
        foreach (var (name, sum) in sums)
        {
            target[name].copy_(sum.div(checkpoints.Count).to_type(target[name].dtype));
        }
    }

    /// <summary>
    /// Replaces every batch norm's running statistics by the image-weighted mean of its training-mode batch statistics
    /// over <paramref name="count"/> shuffled training images.
    /// </summary>
    internal static void Recalibrate(BinaryNetwork net, ImageSet train, int count, Augmentation augmentation, int seed)
    {
        var norms = net.modules().OfType<BatchNorm>().ToList();
        foreach (var norm in norms)
        {
            norm.reset_running_stats();
        }
        net.train();
        using (no_grad())
        {
            Trainer.ForEachAugmentedBatch(train, count, augmentation, seed, stream: 2, (start, x) =>
            {
                foreach (var norm in norms)
                {
                    // Weighted by images, so that a short last batch counts for what it holds.
                    norm.momentum = (double)x.shape[0] / (start + x.shape[0]);
                }
                net.forward(x);
            });
        }
        foreach (var norm in norms)
        {
            norm.momentum = 0.1;
        }
        net.eval();
    }
}
