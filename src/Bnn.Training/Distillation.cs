using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>
/// Knowledge distillation (Hinton et al., 2015) from a float teacher into a BNN: the loss mixes cross-entropy on the
/// labels with the KL divergence from the teacher's temperature-softened predictions,
/// (1 − α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)). T² keeps the soft term's gradients on the scale of the
/// hard term's as T grows. The teacher is the same architecture's float twin (<see cref="BinaryNetwork.Binarized"/>),
/// trained first with <c>bnn train --float</c>; it runs in eval mode and receives no gradients.
/// </summary>
internal sealed class Distillation : IDisposable
{
    private readonly BinaryNetwork teacher;

    /// <param name="channelsLast">Run the teacher's convs channels-last, as the student's (the layout is faster here).</param>
    public Distillation(string teacherCheckpoint, double weight, double temperature, bool channelsLast)
    {
        if (!(weight is >= 0 and <= 1) || !(temperature > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(weight), $"distillation needs 0 ≤ weight ≤ 1 and temperature > 0 (got {weight}, {temperature})");
        }
        teacher = Exporter.LoadNetwork(teacherCheckpoint, channelsLast);
        Weight = weight;
        Temperature = temperature;
    }

    public double Weight { get; }

    public double Temperature { get; }

    /// <summary>The mixed loss of the student's <paramref name="logits"/> on input <paramref name="x"/> with labels <paramref name="y"/>.</summary>
    public Tensor Loss(Tensor x, Tensor logits, Tensor y)
    {
        Tensor teacherLogits;
        using (no_grad())
        {
            teacherLogits = teacher.forward(x);
        }
        return Loss(logits, teacherLogits, y, Weight, Temperature);
    }

    internal static Tensor Loss(Tensor logits, Tensor teacherLogits, Tensor y, double weight, double temperature)
    {
        var hard = nn.functional.cross_entropy(logits, y);
        // KL per image, summed over classes and averaged over the batch (PyTorch's "batchmean", the true KL).
        var soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits / temperature, 1), nn.functional.log_softmax(teacherLogits / temperature, 1),
            reduction: nn.Reduction.Sum, log_target: true) / logits.shape[0];
        return (hard * (1 - weight)) + (soft * (weight * temperature * temperature));
    }

    public void Dispose() => teacher.Dispose();
}
