using TorchSharp;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>
/// Knowledge distillation (Hinton et al., 2015) from a float teacher into a BNN: the loss mixes cross-entropy on the
/// labels with the KL divergence from the teacher's temperature-softened predictions,
/// (1 − α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)). T² keeps the soft term's gradients on the scale of the
/// hard term's as T grows. The teacher is a float network (<see cref="BinaryNetwork.Binarized"/> false) of any
/// architecture with the student's classes, trained first with <c>bnn train --float</c>; it runs in eval mode and
/// receives no gradients.
/// </summary>
internal sealed class Distillation : IDisposable
{
    private readonly BinaryNetwork teacher;

    /// <param name="channelsLast">Run the teacher's convs channels-last, as the student's (the layout is faster here).</param>
    /// <param name="bf16">
    /// Run the teacher wholly in bfloat16 (weights, batch norm, activations), where the student's binary convs run in
    /// bfloat16 too. Its logits only serve as soft targets at temperature T, so bfloat16's 8 significant bits cost
    /// nothing that matters, and the teacher's forward is about a fifth of a distilled CNV step. Measured on the Zen 4
    /// host (2 threads, the long CNV run switched between the two twice, first epochs after a restart left out): whole
    /// epochs 125.8-136.3 s with a float32 teacher (median 130.7), 108.6-113.3 s with a bfloat16 one (median 109.4), 1.19×.
    /// </param>
    public Distillation(string teacherCheckpoint, double weight, double temperature, bool channelsLast, bool bf16)
    {
        if (!(weight is >= 0 and <= 1) || !(temperature > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(weight), $"distillation needs 0 ≤ weight ≤ 1 and temperature > 0 (got {weight}, {temperature})");
        }
        teacher = Exporter.LoadNetwork(teacherCheckpoint, channelsLast);
        if (bf16)
        {
            teacher.to(bfloat16);
        }
        InBf16 = bf16;
        Weight = weight;
        Temperature = temperature;
    }

    public double Weight { get; }

    public double Temperature { get; }

    /// <summary>Whether the teacher runs in bfloat16.</summary>
    public bool InBf16 { get; }

    /// <summary>The mixed loss of the student's <paramref name="logits"/> on input <paramref name="x"/> with labels <paramref name="y"/>.</summary>
    public Tensor Loss(Tensor x, Tensor logits, Tensor y) => Loss(logits, TeacherLogits(x), y, Weight, Temperature);

    /// <summary>The teacher's float32 logits for input <paramref name="x"/>, without gradients.</summary>
    internal Tensor TeacherLogits(Tensor x)
    {
        using var _ = no_grad();
        return InBf16 ? teacher.forward(x.to(bfloat16)).to(float32) : teacher.forward(x);
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
