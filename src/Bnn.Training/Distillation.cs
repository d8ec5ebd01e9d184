using Bnn.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>
/// Knowledge distillation (Hinton et al., 2015) from float teachers into a BNN: the loss mixes cross-entropy on the
/// labels with the KL divergence from the teachers' temperature-softened predictions,
/// (1 − α)·CE(s, y) + α·T²·KL(p̄_T ‖ softmax(s/T)), where p̄_T is the mean of the teachers' softmax(t/T) (Hinton's
/// ensemble target; one teacher's is its own). T² keeps the soft term's gradients on the scale of the hard term's as T
/// grows. A teacher is a float network (<see cref="BinaryNetwork.Binarized"/> false) of any architecture with the
/// student's classes, trained first with <c>bnn train --float</c>; teachers run in eval mode and receive no gradients.
/// </summary>
internal sealed class Distillation : IDisposable
{
    private readonly BinaryNetwork[] teachers;

    /// <param name="teacherCheckpoints">One or more float networks' checkpoints, averaged as an ensemble.</param>
    /// <param name="weight">α, the soft term's share of the loss.</param>
    /// <param name="temperature">T, the softmax temperature of the soft term.</param>
    /// <param name="channelsLast">Run the teachers' convs channels-last, as the student's (the layout is faster here).</param>
    /// <param name="bf16">
    /// Run the teachers wholly in bfloat16 (weights, batch norm, activations), where the student's binary convs run in
    /// bfloat16 too. Their logits only serve as soft targets at temperature T, so bfloat16's 8 significant bits cost
    /// nothing that matters, and a teacher's forward is about a fifth of a distilled CNV step. Measured on the Zen 4
    /// host (2 threads, the long CNV run switched between the two twice, first epochs after a restart left out): whole
    /// epochs 125.8-136.3 s with a float32 teacher (median 130.7), 108.6-113.3 s with a bfloat16 one (median 109.4), 1.19×.
    /// </param>
    public Distillation(IReadOnlyList<string> teacherCheckpoints, double weight, double temperature, bool channelsLast, bool bf16)
    {
        if (teacherCheckpoints.Count == 0 || !(weight is >= 0 and <= 1) || !(temperature > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(weight),
                $"distillation needs a teacher, 0 ≤ weight ≤ 1 and temperature > 0 (got {teacherCheckpoints.Count} teachers, {weight}, {temperature})");
        }
        teachers = new BinaryNetwork[teacherCheckpoints.Count];
        try
        {
            for (int i = 0; i < teachers.Length; i++)
            {
                teachers[i] = Exporter.LoadNetwork(teacherCheckpoints[i], channelsLast);
                if (bf16)
                {
                    teachers[i].to(bfloat16);
                }
            }
        }
        catch
        {
            Dispose();
            throw;
        }
        InBf16 = bf16;
        Weight = weight;
        Temperature = temperature;
    }

    public double Weight { get; }

    public double Temperature { get; }

    /// <summary>Whether the teachers run in bfloat16.</summary>
    public bool InBf16 { get; }

    /// <summary>The mixed loss of the student's <paramref name="logits"/> on input <paramref name="x"/> with labels <paramref name="y"/>.</summary>
    public Tensor Loss(Tensor x, Tensor logits, Tensor y) => Loss(logits, TargetLogProbabilities(x), y, Weight, Temperature);

    /// <summary>Teacher <paramref name="teacher"/>'s float32 logits for input <paramref name="x"/>, without gradients.</summary>
    internal Tensor TeacherLogits(Tensor x, int teacher = 0)
    {
        using var _ = no_grad();
        return InBf16 ? teachers[teacher].forward(x.to(bfloat16)).to(float32) : teachers[teacher].forward(x);
    }

    /// <summary>log p̄_T: the log of the mean of the teachers' softmax(t/T) for input <paramref name="x"/>.</summary>
    internal Tensor TargetLogProbabilities(Tensor x) => Target([.. Enumerable.Range(0, teachers.Length).Select(i => TeacherLogits(x, i))]);

    private Tensor Target(Tensor[] logits)
    {
        using var _ = no_grad();
        if (logits.Length == 1)
        {
            return nn.functional.log_softmax(logits[0] / Temperature, 1);
        }
        return stack(logits.Select(l => nn.functional.log_softmax(l / Temperature, 1)), 0).logsumexp(0) - Math.Log(logits.Length);
    }

    /// <param name="logits">The student's logits.</param>
    /// <param name="targetLogProbabilities">log p̄_T (<see cref="TargetLogProbabilities"/>).</param>
    /// <param name="y">The labels.</param>
    /// <param name="weight">α.</param>
    /// <param name="temperature">T.</param>
    internal static Tensor Loss(Tensor logits, Tensor targetLogProbabilities, Tensor y, double weight, double temperature)
    {
        var hard = nn.functional.cross_entropy(logits, y);
        // KL per image, summed over classes and averaged over the batch (PyTorch's "batchmean", the true KL).
        var soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits / temperature, 1), targetLogProbabilities,
            reduction: nn.Reduction.Sum, log_target: true) / logits.shape[0];
        return (hard * (1 - weight)) + (soft * (weight * temperature * temperature));
    }

    /// <summary>
    /// The accuracy on <paramref name="set"/> of each teacher and of the target the student is taught (argmax of p̄_T),
    /// each as it runs here (in bfloat16 where <see cref="InBf16"/>): what the student can hope to approach.
    /// </summary>
    public TeacherAccuracy Accuracy(ImageSet set)
    {
        if (set.Count == 0)
        {
            return new TeacherAccuracy([.. teachers.Select(_ => double.NaN)], double.NaN);
        }
        foreach (var teacher in teachers)
        {
            teacher.eval();
        }
        var correct = new long[teachers.Length];
        long together = 0;
        Trainer.ForEachEvalBatch(set, (_, x, y) =>
        {
            var logits = Enumerable.Range(0, teachers.Length).Select(i => TeacherLogits(x, i)).ToArray();
            for (int i = 0; i < teachers.Length; i++)
            {
                correct[i] += logits[i].argmax(1).eq(y).sum().item<long>();
            }
            together += Target(logits).argmax(1).eq(y).sum().item<long>();
        });
        return new TeacherAccuracy([.. correct.Select(c => (double)c / set.Count)], (double)together / set.Count);
    }

    public void Dispose()
    {
        foreach (var teacher in teachers)
        {
            teacher?.Dispose();
        }
    }
}

/// <summary>Validation accuracy of each distillation teacher (in the order given) and of their ensemble's target.</summary>
public sealed record TeacherAccuracy(IReadOnlyList<double> Each, double Together);
