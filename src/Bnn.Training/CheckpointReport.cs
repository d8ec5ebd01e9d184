using System.Globalization;
using System.Text;

namespace Bnn.Training;

/// <summary>
/// A training checkpoint described from its header alone, without loading weights: the run, where its schedule
/// stands, its best epoch, whether it can be resumed, and its last epochs. A run resumed across sessions is steered
/// by exactly these facts, which otherwise only show once training has started again.
/// </summary>
public sealed class CheckpointReport
{
    private readonly CheckpointHeader header;

    internal CheckpointReport(CheckpointHeader header) => this.header = header;

    /// <summary>Reads the checkpoint's header once; the weights are not loaded.</summary>
    public static CheckpointReport Read(string path) => new(Checkpoint.ReadHeader(path));

    /// <summary>Every epoch the checkpoint's run has logged, from its first (resumes carry the history on).</summary>
    public IReadOnlyList<EpochRecord> History => header.History;

    /// <summary>The run's best epoch, or 0 when no epoch has completed.</summary>
    public int BestEpoch => Math.Max(0, header.BestEpoch);

    /// <summary>A few lines on the run and its position, then a table of its last <paramref name="lastEpochs"/> epochs.</summary>
    public string Describe(int lastEpochs = 5)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(lastEpochs);
        return Describe(header, lastEpochs);
    }

    private static string Describe(CheckpointHeader h, int lastEpochs)
    {
        var inv = CultureInfo.InvariantCulture;
        var text = new StringBuilder();
        text.Append(TrainSetup.Network(h.Arch, h.Width, h.Float, h.Dataset, h.PoolBeforeNorm ?? false)).Append(inv, $", seed {h.Seed}, batch {h.BatchSize}, ")
            .Append(inv, $"{h.ValidationCount:N0} validation images");
        if (h.TeacherPaths.Count > 0)
        {
            text.Append("; ").Append(TrainSetup.Distilling(h.TeacherPaths, h.DistillWeight, h.DistillTemperature));
        }
        text.AppendLine();

        text.Append(inv, $"epoch {h.CompletedEpochs} of {h.Epochs} done; ").Append(TrainSetup.Schedule(h.LearningRate, h.CycleStart, h.Epochs, h.WeightDecay ?? 0));
        if (h.CompletedEpochs < h.Epochs)
        {
            double next = Trainer.CosineLearningRate(h.LearningRate, h.CompletedEpochs - h.CycleStart, h.Epochs - h.CycleStart);
            text.Append(inv, $", {Rate(next)} for epoch {h.CompletedEpochs + 1}");
        }
        text.Append(inv, $"; augmentation {AugmentationNames.Of(h.TrainingAugmentation)}; ")
            .AppendLine(h.ChannelsLast is bool cl && h.Bf16BinaryConvs is bool bf16
                // The header keeps the run's choice, not what each host did with it: say so, or a run resumed on a
                // host without bfloat16 would read as if it had multiplied in bfloat16 there.
                ? TrainSetup.LayoutAndPrecision(cl, bf16, h.Float) + (bf16 ? " where the host has it" : "")
                : "layout and precision not recorded (a checkpoint from before they were)");

        text.Append(h.BestEpoch > 0
            ? string.Create(inv, $"best validation {h.BestValidationAccuracy:P2} at epoch {h.BestEpoch}; ")
            : "no epoch completed; ");
        text.AppendLine(h switch
        {
            { AveragedEpochs: { Count: > 0 } averaged } => string.Create(inv,
                $"weights only: the average of epochs {Ranges(averaged)}{(h.RecalibrationImages is int n ? string.Create(inv, $", batch norm re-estimated on {n:N0} training images") : "")}"),
            { Packed: true } => string.Create(inv,
                $"a pack ({(h.Float ? "weights in float32" : "latent weights in 16-bit fixed point")}, {(h.HasOptimizerState ? "Adam's second moments in 8 bits" : "no optimizer state")}) carrying {(h.BestEpoch > 0 ? $"best epoch {h.BestEpoch}" : "no best epoch")}: resumable"),
            { HasOptimizerState: true } => "resumable (holds Adam's state)",
            _ => "weights only, without Adam's state: export or evaluate it; resume from the run's latest checkpoint",
        });

        if (h.History.Count == 0)
        {
            return text.ToString();
        }
        // Timing and memory of recent epochs only: a long run's early epochs ran on other builds and settings.
        var recent = h.History.TakeLast(Math.Max(1, lastEpochs)).ToList();
        var seconds = recent.Select(r => r.EpochSeconds).Order().ToList();
        text.Append(inv, $"wall time {Hours(h.History[^1].WallSeconds)}; ")
            .Append(recent.Count == 1
                ? string.Create(inv, $"the last epoch took {seconds[0]:F1} s")
                : string.Create(inv, $"the last {recent.Count} epochs took {seconds[0]:F1}-{seconds[^1]:F1} s (median {Median(seconds):F1})"))
            .Append(inv, $", peak RSS {recent.Max(r => r.PeakRssMb):N0} MB");
        // What a resumed run must plan a session around: the schedule's remaining time at the recent pace.
        int left = h.Epochs - h.CompletedEpochs;
        if (left > 0)
        {
            text.Append(inv, $"; {left} epoch{(left == 1 ? "" : "s")} to go, about {Hours(left * Median(seconds))} at {(recent.Count == 1 ? "that pace" : "the median")}");
        }
        text.AppendLine();
        if (lastEpochs > 0)
        {
            text.AppendLine("epoch  train loss  train acc  val loss  val acc        lr  seconds");
            foreach (var r in recent)
            {
                text.AppendLine(inv,
                    $"{r.Epoch,5}  {r.TrainLoss,10:F4}  {r.TrainAccuracy,9:P2}  {r.ValidationLoss,8:F4}  {r.ValidationAccuracy,7:P2}  {Rate(r.LearningRate),8}  {r.EpochSeconds,7:F1}");
            }
        }
        return text.ToString();
    }

    /// <summary>A learning rate in three significant digits, as 2e-3 or 1.22e-3, so that a schedule's tail stays readable.</summary>
    internal static string Rate(double rate) => rate.ToString("0.##e-0", CultureInfo.InvariantCulture);

    /// <summary>Epoch numbers with consecutive runs joined: 305-314, or 3, 5-7.</summary>
    private static string Ranges(IReadOnlyList<int> epochs)
    {
        var parts = new List<string>();
        for (int i = 0; i < epochs.Count;)
        {
            int j = i;
            while (j + 1 < epochs.Count && epochs[j + 1] == epochs[j] + 1)
            {
                j++;
            }
            parts.Add(j == i ? $"{epochs[i]}" : $"{epochs[i]}-{epochs[j]}");
            i = j + 1;
        }
        return string.Join(", ", parts);
    }

    private static string Hours(double seconds) =>
        string.Create(CultureInfo.InvariantCulture, $"{(int)(seconds / 3600)}:{TimeSpan.FromSeconds(seconds):mm\\:ss}");

    private static double Median(List<double> sorted) =>
        sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
}
