using System.Globalization;

namespace Bnn.Training;

/// <summary>What <c>bnn train</c> was asked to do.</summary>
public sealed record TrainOptions
{
    /// <summary>Architecture name, see <see cref="Bnn.Model.Architectures"/>.</summary>
    public required string Arch { get; init; }

    /// <summary>Channel-count multiplier.</summary>
    public double Width { get; init; } = 1.0;

    /// <summary>Dataset name.</summary>
    public required string Dataset { get; init; }

    /// <summary>Directory holding the dataset files.</summary>
    public required string DataDir { get; init; }

    /// <summary>Total epochs of the run (the learning-rate schedule spans these).</summary>
    public required int Epochs { get; init; }

    /// <summary>Where the finished model file goes; checkpoints and the CSV log sit beside it.</summary>
    public required string Out { get; init; }

    /// <summary>A checkpoint or a <see cref="CheckpointPack"/> to continue from.</summary>
    public string? Resume { get; init; }

    /// <summary>Seed for initialization, shuffling and augmentation.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>libtorch intra-op threads (0 keeps its default).</summary>
    public int Threads { get; init; }

    /// <summary>Mini-batch size.</summary>
    public int BatchSize { get; init; } = 100;

    /// <summary>Initial Adam learning rate; cosine-annealed to zero over <see cref="Epochs"/>.</summary>
    public double LearningRate { get; init; } = 2e-3;

    /// <summary>The last this-many training records are held out for validation.</summary>
    public int ValidationCount { get; init; } = 5000;

    /// <summary>Use only the first this-many training records (smoke tests); null for all.</summary>
    public int? TrainLimit { get; init; }

    /// <summary>Stop each epoch after this many batches (smoke tests); null for all.</summary>
    public int? MaxBatchesPerEpoch { get; init; }

    /// <summary>
    /// Run convs channels-last; null keeps a resumed run's layout, or else turns it on. Measured with 2 threads on the
    /// Zen 4 host: BinaryNet-VGG 1.26× faster (10 batches plus 5,000 validation images, 77.4 → 61.4 s), the distilled
    /// CNV 72.1 → 60.4 s (120 batches plus validation; an earlier 10-batch measurement had shown no clear difference).
    /// </summary>
    public bool? ChannelsLast { get; init; }

    /// <summary>
    /// Multiply convs after the first in bfloat16 while training (see <c>BinaryNetwork.Bf16Convs</c>: exact in a binary
    /// network, mixed precision in a float twin); null keeps a resumed run's choice, or else turns it on where the CPU
    /// has bfloat16 dot products (<see cref="CpuHasBf16DotProducts"/>). A resumed choice of bfloat16 is set aside on a
    /// CPU without them, where it would only be emulated, but kept in the checkpoints (<see cref="ResolveBf16"/>). Measured on the Zen 4 host (2 threads, the distilled CNV,
    /// channels-last): 120 batches plus validation 49.6-56.0 s against 61.5-63.3 s. With channels-last, whole epochs
    /// took 138-166 s (mean 151) against 185-190 s contiguous in float32. A distillation teacher then runs in bfloat16
    /// too (<c>Distillation</c>).
    /// </summary>
    public bool? Bf16BinaryConvs { get; init; }

    /// <summary>
    /// Whether this run multiplies in bfloat16 (<see cref="Bf16BinaryConvs"/>), and the choice its checkpoints record.
    /// They differ only when a resumed run's bfloat16 is dropped for want of the hardware: the checkpoint keeps the
    /// choice, so that the next resume on a host that has it runs in bfloat16 again without being told.
    /// </summary>
    internal static (bool Run, bool Record) ResolveBf16(bool? requested, bool? resumed, bool cpuHasBf16)
    {
        if (requested is bool explicitChoice)
        {
            return (explicitChoice, explicitChoice);
        }
        bool choice = resumed ?? true;
        return (choice && cpuHasBf16, choice);
    }

    /// <summary>Whether this CPU reports AVX-512 BF16 or AMX-BF16 (Linux <c>/proc/cpuinfo</c>; false elsewhere).</summary>
    public static bool CpuHasBf16DotProducts => CpuBf16.Value;

    private static readonly Lazy<bool> CpuBf16 = new(() =>
        File.Exists("/proc/cpuinfo") && ReportsBf16DotProducts(File.ReadLines("/proc/cpuinfo")));

    /// <summary>Whether the <c>flags</c> lines of a <c>/proc/cpuinfo</c> text name avx512_bf16 or amx_bf16.</summary>
    internal static bool ReportsBf16DotProducts(IEnumerable<string> cpuinfoLines) => cpuinfoLines
        .Where(line => line.StartsWith("flags", StringComparison.Ordinal))
        .SelectMany(line => line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries))
        .Any(flag => flag is "avx512_bf16" or "amx_bf16");

    /// <summary>
    /// The training augmentation; null keeps a resumed run's, or else takes <see cref="DefaultAugmentation"/>. Flip-only
    /// or none serves a last phase on images as test images come, without the crops' grey borders (on the CNV it did
    /// not raise validation accuracy: models/README.md).
    /// </summary>
    public Augmentation? Augmentation { get; init; }

    /// <summary>How training on <paramref name="dataset"/> augments its images: CIFAR-10 crop and flip, SVHN (digits) none.</summary>
    public static Augmentation DefaultAugmentation(string dataset) => dataset == "cifar10" ? Training.Augmentation.CropFlip : Training.Augmentation.None;

    /// <summary>
    /// On resume, start a new cosine cycle at this learning rate, annealed to zero from the resumed epoch to
    /// <see cref="Epochs"/>; null continues the resumed run's schedule, recomputed for the new total.
    /// </summary>
    public double? RestartLearningRate { get; init; }

    /// <summary>
    /// Also keep every epoch's weights as <c>M.epochNNN.ckpt</c> (no optimizer state), for <see cref="WeightAveraging"/>.
    /// </summary>
    public bool KeepEpochCheckpoints { get; init; }

    /// <summary>Train the architecture's float twin instead (real weights, ReLU), as a distillation teacher.</summary>
    public bool Float { get; init; }

    /// <summary>
    /// Float networks' checkpoints to distill from (<see cref="Distillation"/>), more than one as an ensemble; empty
    /// trains on labels alone, or keeps a resumed run's teachers.
    /// </summary>
    public IReadOnlyList<string> Teachers { get; init; } = [];

    /// <summary>α, the soft (teacher) share of the distillation loss.</summary>
    public double DistillWeight { get; init; } = 0.5;

    /// <summary>T, the softmax temperature of the distillation loss.</summary>
    public double DistillTemperature { get; init; } = 4;

    /// <summary>
    /// Decoupled weight decay λ (AdamW; Loshchilov and Hutter, 2019) in PyTorch's convention: after each step the conv,
    /// dense and output weights are scaled by 1 − lr·λ, lr being that epoch's rate; batch norm and the output
    /// temperature are not decayed. Adam's own L2 term would be divided by √v and so decay least the weights that move most. Null keeps
    /// a resumed run's, or else 0. Meant for float twins: the BinaryNet-VGG teacher trained without it fitted 96 % of
    /// its training images and reached 88.22 % validation (models/README.md); on latent binary weights it pulls them
    /// toward their sign flips.
    /// </summary>
    public double? WeightDecay { get; init; }

    /// <summary>
    /// Pool each conv's sums before batch norm and the sign, as BinaryNet does, instead of pooling the signs
    /// (<c>BinaryNetwork.PoolBeforeNorm</c>; the exported model is the same kind either way). Null keeps a resumed run's
    /// order, or else pools after the sign. Resuming a run of the other order with true converts its weights exactly
    /// (<c>BinaryNetwork.MovePoolsBeforeNorm</c>, then <c>RenormalizePooledStages</c>): the resumed network computes the
    /// same in evaluation, nearly the same in training, and training goes on in this order.
    /// </summary>
    public bool? PoolBeforeNorm { get; init; }
}

/// <summary>
/// What a run does once a resumed checkpoint's choices are applied to the options: a resume keeps most of them, so
/// the command line alone does not say how the run will train. <paramref name="OptimizerNote"/> says how Adam resumes
/// when its state is not all there (a pack, a weights-only checkpoint); null otherwise. <paramref name="TeacherAccuracy"/>
/// is the teachers' validation accuracy, measured as the run starts.
/// </summary>
public sealed record TrainSetup(
    string Arch, double Width, bool Float, string Dataset, int TrainCount, int ValidationCount, int BatchSize,
    int CompletedEpochs, int Epochs, double LearningRate, int CycleStart, Augmentation Augmentation,
    bool ChannelsLast, bool Bf16BinaryConvs, IReadOnlyList<string> Teachers, double? DistillWeight, double? DistillTemperature, bool TeacherInBf16,
    string? OptimizerNote = null, double WeightDecay = 0, TeacherAccuracy? TeacherAccuracy = null, bool PoolBeforeNorm = false,
    int? ChannelsFlippedToPoolBeforeNorm = null)
{
    /// <summary>One line for a log, starting with the architecture.</summary>
    public string Describe()
    {
        var epochs = CompletedEpochs < Epochs ? $"epochs {CompletedEpochs + 1}-{Epochs}" : $"all {Epochs} epochs done";
        var text = string.Create(CultureInfo.InvariantCulture,
            $"{Network(Arch, Width, Float, Dataset, PoolBeforeNorm)}: {TrainCount:N0} training and {ValidationCount:N0} validation " +
            $"images, batch {BatchSize}; {epochs}, {Schedule(LearningRate, CycleStart, Epochs, WeightDecay)}; " +
            $"augmentation {AugmentationNames.Of(Augmentation)}; {LayoutAndPrecision(ChannelsLast, Bf16BinaryConvs, Float)}");
        if (Teachers.Count > 0)
        {
            text = string.Create(CultureInfo.InvariantCulture,
                $"{text}; {Distilling(Teachers, DistillWeight, DistillTemperature, TeacherAccuracy)}, {(Teachers.Count > 1 ? "teachers" : "teacher")} in {(TeacherInBf16 ? "bfloat16" : "float32")}");
        }
        if (ChannelsFlippedToPoolBeforeNorm is int flipped)
        {
            text = string.Create(CultureInfo.InvariantCulture,
                $"{text}; pooling moved before batch norm from the resumed run's order: {flipped} channels' signs flipped to keep γ ≥ 0, the pooled batch norms re-expressed in the pooled sums' statistics over {Math.Min(Trainer.RenormalizationImages, TrainCount):N0} training images");
        }
        return OptimizerNote is null ? text : $"{text}; {OptimizerNote}";
    }

    /// <summary>How Adam resumes from a checkpoint: null when its whole state is there.</summary>
    internal static string? OptimizerResume(bool packed, bool hasOptimizerState) => (packed, hasOptimizerState) switch
    {
        (true, true) => "Adam resumes with the pack's second moments, its first moments from zero",
        (_, false) => "the checkpoint holds no optimizer state: Adam starts afresh",
        _ => null,
    };

    // The phrases below are shared with CheckpointReport, so that a run's setup line and its checkpoint's description read alike.
    internal static string Network(string arch, double width, bool isFloat, string dataset, bool poolBeforeNorm) =>
        string.Create(CultureInfo.InvariantCulture,
            $"{arch} ×{width}{(isFloat ? " (float twin)" : "")}{(poolBeforeNorm ? ", pooling before batch norm" : "")} on {dataset}");

    internal static string Schedule(double learningRate, int cycleStart, int epochs, double weightDecay) =>
        string.Create(CultureInfo.InvariantCulture, $"learning rate {CheckpointReport.Rate(learningRate)} cosine-annealed over epochs {cycleStart + 1}-{epochs}") +
        (weightDecay > 0 ? string.Create(CultureInfo.InvariantCulture, $", decoupled weight decay {weightDecay}") : "");

    /// <summary>"distilling from A and B (α, T)", with each teacher's validation accuracy and their ensemble's when measured.</summary>
    internal static string Distilling(IReadOnlyList<string> teachers, double? weight, double? temperature, TeacherAccuracy? accuracy = null)
    {
        var inv = CultureInfo.InvariantCulture;
        var named = teachers.Select((t, i) => accuracy is null ? t : string.Create(inv, $"{t} (validation {accuracy.Each[i]:P2})")).ToList();
        var list = named.Count == 1 ? named[0] : $"{string.Join(", ", named.Take(named.Count - 1))} and {named[^1]}";
        var together = accuracy is not null && teachers.Count > 1 ? string.Create(inv, $", their mean {accuracy.Together:P2}") : "";
        return string.Create(inv, $"distilling from {list}{together} (α {weight}, T {temperature})");
    }

    internal static string LayoutAndPrecision(bool channelsLast, bool bf16Convs, bool isFloat) =>
        $"{(channelsLast ? "channels-last" : "contiguous")}, " + (isFloat
            ? $"convs after the first in {(bf16Convs ? "bfloat16 (mixed precision)" : "float32")}"
            : $"binary convs in {(bf16Convs ? "bfloat16" : "float32")}");
}

/// <summary>Per-epoch figures, as logged to the CSV and stored in checkpoints.</summary>
public sealed record EpochRecord(
    int Epoch, double TrainLoss, double TrainAccuracy, double ValidationLoss, double ValidationAccuracy,
    double LearningRate, double EpochSeconds, double WallSeconds, double PeakRssMb);

/// <summary>A progress report during an epoch.</summary>
public sealed record TrainProgress(int Epoch, int Epochs, int Batch, int Batches, double Loss, double Accuracy, TimeSpan Eta);
