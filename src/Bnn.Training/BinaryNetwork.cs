using Bnn.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>
/// A trainable BNN built from an architecture's <see cref="LayerSpec"/> list. Every stage binarizes its weights with
/// <see cref="SteSign"/>; conv and hidden dense stages end in batch norm then sign, so that the engine can fold each
/// into an integer threshold. The engine pools after the sign (max over ±1 is an OR); training may pool there too,
/// or, as BinaryNet does, on the conv's sums before batch norm (<see cref="PoolBeforeNorm"/>), which the engine
/// reproduces exactly as long as that batch norm's scale is ≥ 0.
/// </summary>
internal sealed class BinaryNetwork : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<nn.Module<Tensor, Tensor>> stages;

    public BinaryNetwork(
        IReadOnlyList<LayerSpec> specs, int inChannels = 3, int binaryPadValue = 1, int inputSize = 32, bool channelsLast = false,
        bool bf16Convs = false, bool binarized = true, bool poolBeforeNorm = false)
        : base(nameof(BinaryNetwork))
    {
        Specs = specs;
        PoolBeforeNorm = poolBeforeNorm;
        ChannelsLast = channelsLast;
        Binarized = binarized;
        Bf16Convs = bf16Convs;
        stages = new ModuleList<nn.Module<Tensor, Tensor>>();
        int channels = inChannels;
        int features = -1;
        int side = inputSize;
        bool first = true;
        for (int i = 0; i < specs.Count; i++)
        {
            switch (specs[i])
            {
                case ConvSpec c:
                    int pool = poolBeforeNorm && i + 1 < specs.Count && specs[i + 1] is PoolSpec next ? next.Size : 0;
                    stages.Add(new ConvStage(channels, c, first, binaryPadValue, channelsLast, Bf16Convs, binarized, pool));
                    channels = c.OutChannels;
                    side = ((side + (2 * c.Padding) - c.Kernel) / c.Stride) + 1;
                    first = false;
                    break;
                case PoolSpec p:
                    // A pool the conv stage before it already took keeps its place as a no-op, so that stage i stays
                    // spec i and both orders share parameter names: a checkpoint loads into either.
                    stages.Add(stages.Count > 0 && stages[^1] is ConvStage { PoolSize: > 0 } ? new PooledInConvStage() : nn.MaxPool2d(p.Size));
                    side /= p.Size;
                    break;
                case DenseSpec d:
                    stages.Add(new DenseStage(features < 0 ? channels * side * side : features, d.OutFeatures, binarized));
                    features = d.OutFeatures;
                    break;
                case OutputSpec o:
                    stages.Add(new OutputStage(features < 0 ? channels * side * side : features, o.Classes, binarized));
                    break;
                default:
                    throw new ArgumentException($"unsupported layer spec {specs[i]}");
            }
        }
        RegisterComponents();
    }

    public IReadOnlyList<LayerSpec> Specs { get; }

    /// <summary>
    /// Whether a conv followed by a pool pools its sums before batch norm and the sign (BinaryNet's order: conv, pool,
    /// batch norm, sign) rather than pooling the signs. Max-pool routes the gradient to one position per window: here
    /// the one with the largest sum, not the first of the tied +1 signs; and batch norm normalizes the pooled values
    /// that the sign thresholds, not the per-position ones, whose OR over a window is mostly +1.
    /// <para>
    /// The engine keeps one order, thresholds then OR. The two agree exactly when the threshold is non-decreasing in
    /// the sum, that is when batch norm's scale γ ≥ 0: for a non-decreasing f, f(max x) = max f(x). A negative γ would
    /// turn the pool into an AND, so training clamps the pooled stages' γ at 0 (<see cref="ClipAfterStep"/>); that
    /// loses nothing, since (w, γ, μ) → (−w, −γ, −μ) leaves batch norm's output unchanged
    /// (<see cref="MovePoolsBeforeNorm"/>).
    /// </para>
    /// </summary>
    public bool PoolBeforeNorm { get; }

    /// <summary>
    /// Whether convs run on channels-last (NHWC-strided) tensors. Results are the same: every sum is of integers
    /// small enough for float32 to hold exactly, in any order.
    /// </summary>
    public bool ChannelsLast { get; }

    /// <summary>
    /// Whether convs after the first multiply in bfloat16 while training. In a binary network inputs and weights are
    /// ±1, so the products are exact; libtorch accumulates in float32 but rounds each sum to bfloat16's 8
    /// significant bits. Sums beyond ±256 therefore carry a rounding error of at most 1/256 of their size, well below
    /// batch norm's scale (the spread of a sum over n taps is about √n). Evaluation always runs in float32, so
    /// validation figures and the export are unaffected. The latent weights and Adam's state stay float32 (bfloat16 latent
    /// weights would lose small updates); only activations and their gradients pass through bfloat16. Measured here:
    /// BinaryNet-VGG's conv shapes about 1.7× faster forward and backward, its whole epoch 790 → 499 s (1.58×).
    /// The sums stay in bfloat16 into batch norm, which libtorch runs in mixed precision (float32 statistics,
    /// parameters and arithmetic, bfloat16 input and output). Its output only feeds the sign: rounding keeps every
    /// sign (bfloat16 has float32's exponent range) and moves the estimator's |x| ≤ 1 cut-off by less than 1/256.
    /// Every conv stage makes its signs in bfloat16 too (exact for ±1), and the first dense stage takes them back
    /// to float32. So batch norm, the sign, pooling, padding and their gradients move half the bytes they would in
    /// float32: a BinaryNet-VGG epoch on the Zen 4 host went from 826 s to 754-784 s (bfloat16 signs alone) to
    /// 678-710 s (both; median 689 over epochs 8-10), about 1.2×, and its peak RSS from 8.9 to 6.0-6.3 GB.
    /// <para>In the float twin (<see cref="Binarized"/> false) the same convs run in ordinary mixed precision: real
    /// weights and activations are rounded to bfloat16 for the multiply, which is not exact, while the weights, Adam's
    /// state and evaluation stay float32. That is how float nets are commonly trained in bfloat16, and a teacher
    /// already distils in bfloat16 (<see cref="Distillation"/>); the twin makes no signs, so its ReLU outputs pass on
    /// in the type batch norm gave. On the Emerald Rapids host (AMX) a BinaryNet-VGG twin's step took 0.46 s a batch
    /// of 100 against 1.93 s in float32 (4.2×), over 12 timed batches; its whole epochs of 450 batches took 274-609 s
    /// (0.6-1.4 s a batch with data loading and evaluation), because that host's speed swings up to 2×.</para>
    /// </summary>
    public bool Bf16Convs { get; }

    /// <summary>
    /// False for the float twin: the same topology with real weights and ReLU after each batch norm instead of sign.
    /// It cannot be exported to the bit-packed format; it serves as a distillation teacher (<see cref="Distillation"/>).
    /// </summary>
    public bool Binarized { get; }

    /// <summary>The weights a stage multiplies by: their signs, or (float twin) the weights themselves.</summary>
    internal static Tensor StageWeights(Parameter latent, bool binarized) => binarized ? SteSign.Sign(latent) : latent;

    /// <summary>A stage's activation after batch norm: sign (in <paramref name="signType"/>, else x's dtype), or (float twin) ReLU.</summary>
    internal static Tensor Activate(Tensor x, bool binarized, ScalarType? signType = null) =>
        binarized ? SteSign.Sign(x, signType) : nn.functional.relu(x);

    /// <summary>A dense stage's input: flattened in (C, H, W) order (the exporter records it for the engine), in the weights' dtype.</summary>
    private static Tensor DenseInput(Tensor x, Tensor weight)
    {
        var flat = x.dim() > 2 ? x.flatten(1) : x;
        // Signs from a conv stage training in bfloat16 arrive in it; the dense products keep the weights' precision.
        return flat.dtype == weight.dtype ? flat : flat.to_type(weight.dtype);
    }

    public IReadOnlyList<nn.Module<Tensor, Tensor>> Stages => [.. stages];

    public override Tensor forward(Tensor input)
    {
        var x = ChannelsLast ? ToChannelsLast(input) : input;
        foreach (var stage in stages)
        {
            x = stage.forward(x);
        }
        return x;
    }

    /// <summary>
    /// The same NCHW tensor with NHWC strides, the layout libtorch calls channels-last. TorchSharp 0.107 has no
    /// memory-format argument, so it is spelled as a permute, a copy and the inverse permute.
    /// </summary>
    internal static Tensor ToChannelsLast(Tensor x) => x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);

    /// <summary>
    /// Keeps latent binary weights in [−1, 1], as BinaryNet does after each update, and the batch-norm scale of a
    /// stage that pools before it ≥ 0 (<see cref="PoolBeforeNorm"/>).
    /// </summary>
    public void ClipAfterStep()
    {
        if (!Binarized)
        {
            return;
        }
        using var _ = no_grad();
        foreach (var weight in Weights)
        {
            weight.clamp_(-1.0, 1.0);
        }
        foreach (var stage in PooledConvStages)
        {
            stage.Norm.weight!.clamp_(min: 0.0);
        }
    }

    private IEnumerable<ConvStage> PooledConvStages => stages.OfType<ConvStage>().Where(c => c.PoolSize > 0);

    /// <summary>
    /// After <see cref="MovePoolsBeforeNorm"/> the network computes the same in evaluation, but training normalizes each
    /// pooled stage by the batch statistics of its pooled sums, higher in mean and narrower than the per-position ones
    /// its β and γ were fitted to, so its thresholds jump (converted plainly, a distilled BinaryNet-VGG's training
    /// accuracy fell from 93 % to 84-88 % over the first 180 steps). This re-expresses each pooled batch norm in the
    /// pooled sums' statistics (μₚ, varₚ), measured in evaluation over the batches <paramref name="feed"/> passes to its
    /// argument: with σ = √(var + ε), γ' = γ·σₚ/σ and β' = β + γ·(μₚ − μ)/σ give γ'(x − μₚ)/σₚ + β' = γ(x − μ)/σ + β
    /// for every x, and the running statistics become (μₚ, varₚ). Evaluation is unchanged, and training, normalizing by
    /// batch statistics near (μₚ, varₚ), starts from nearly the function the run had. Each stage is measured with the
    /// ones before it unchanged, which holds because in evaluation none of them changes. Returns the positions measured
    /// per channel of the first pooled stage.
    /// </summary>
    internal long RenormalizePooledStages(Action<Action<Tensor>> feed)
    {
        using var scope = NewDisposeScope();
        var pooled = PooledConvStages.ToList();
        var sums = pooled.Select(c => zeros(c.Spec.OutChannels, dtype: float64)).ToList();
        var squares = pooled.Select(c => zeros(c.Spec.OutChannels, dtype: float64)).ToList();
        var counts = new long[pooled.Count];
        eval();
        using (no_grad())
        {
            feed(input =>
            {
                var x = ChannelsLast ? ToChannelsLast(input) : input;
                foreach (var stage in stages)
                {
                    int i = stage is ConvStage c ? pooled.IndexOf(c) : -1;
                    if (i < 0)
                    {
                        x = stage.forward(x);
                        continue;
                    }
                    var s = pooled[i].Sums(x);
                    var wide = s.to_type(float64);
                    sums[i].add_(wide.sum([0, 2, 3]));
                    squares[i].add_(wide.square().sum([0, 2, 3]));
                    counts[i] += s.shape[0] * s.shape[2] * s.shape[3];
                    x = pooled[i].Normalize(s);
                }
            });
            for (int i = 0; i < pooled.Count; i++)
            {
                var norm = pooled[i].Norm;
                var mean = sums[i] / counts[i];
                var variance = (squares[i] / counts[i]) - mean.square();
                var sigma = (norm.running_var!.to_type(float64) + norm.eps).sqrt();
                var pooledSigma = (variance + norm.eps).sqrt();
                var gamma = norm.weight!.to_type(float64);
                norm.bias!.add_((gamma * (mean - norm.running_mean!.to_type(float64)) / sigma).to_type(float32));
                norm.weight!.copy_((gamma * pooledSigma / sigma).to_type(float32));
                norm.running_mean!.copy_(mean.to_type(float32));
                norm.running_var!.copy_(variance.to_type(float32));
            }
        }
        return counts.Length > 0 ? counts[0] : 0;
    }

    /// <summary>
    /// Turns weights trained with pooling after the sign into weights for this network's pool-before-norm order that
    /// compute the same in evaluation: in each pooled stage, every channel with γ &lt; 0 gets (w, γ, μ) → (−w, −γ, −μ),
    /// which leaves batch norm's output, and so the signs and their OR, unchanged; with γ ≥ 0 thresholding commutes
    /// with the max. Adam's first moments of those values flip with them. Returns the number of channels flipped.
    /// <para>Only for weights trained in the other order: in this order a negative γ pools as an AND, and flipping it
    /// would make it an OR.</para>
    /// </summary>
    internal int MovePoolsBeforeNorm(Adam? optimizer)
    {
        if (!PoolBeforeNorm || !Binarized)
        {
            throw new InvalidOperationException("only a binary network that pools before batch norm takes weights from the other order");
        }
        using var _ = no_grad();
        var parameters = this.parameters().ToList();
        var states = optimizer?.state_dict().State.Cast<Adam.State>().ToList();
        int flipped = 0;
        foreach (var stage in PooledConvStages)
        {
            using var scope = NewDisposeScope();
            var gamma = stage.Norm.weight!;
            var negative = gamma.lt(0);
            int count = (int)negative.sum().item<long>();
            if (count == 0)
            {
                continue;
            }
            flipped += count;
            var channelSign = where(negative, -1.0f, 1.0f);
            var rowSign = channelSign.view(-1, 1, 1, 1);
            var w = stage.Weight;
            // sign(0) = +1 = sign(−0): a latent weight of exactly 0 in a flipped row must become negative (here by one
            // step of a pack's fixed point).
            var zeroInFlippedRow = w.eq(0).logical_and(negative.view(-1, 1, 1, 1));
            w.mul_(rowSign).masked_fill_(zeroInFlippedRow, -1.0 / 32767);
            gamma.mul_(channelSign);
            stage.Norm.running_mean!.mul_(channelSign);
            if (states is not null)
            {
                states[parameters.IndexOf(w)].exp_avg.mul_(rowSign);
                states[parameters.IndexOf(gamma)].exp_avg.mul_(channelSign);
            }
        }
        return flipped;
    }

    /// <summary>Scales every conv, dense and output weight by <paramref name="factor"/> (decoupled weight decay); batch norm and the output temperature are left alone.</summary>
    public void ScaleWeights(double factor)
    {
        using var _ = no_grad();
        foreach (var weight in Weights)
        {
            weight.mul_(factor);
        }
    }

    /// <summary>The weights of every conv, dense and output stage: latent binary weights, or a float twin's real ones.</summary>
    private IEnumerable<Parameter> Weights => stages.OfType<IBinaryWeights>().Select(b => b.Weight);

    /// <summary>
    /// Latent weights start small, uniform in ±1/√fan_in (PyTorch's default bound). Starting them across the whole
    /// clip range [−1, 1] instead leaves most signs frozen for hundreds of Adam steps and slows training markedly.
    /// </summary>
    internal static Tensor LatentInit(params long[] shape)
    {
        long fanIn = shape.Skip(1).Aggregate(1L, (a, b) => a * b);
        double bound = 1.0 / Math.Sqrt(fanIn);
        return empty(shape).uniform_(-bound, bound);
    }

    internal interface IBinaryWeights
    {
        Parameter Weight { get; }
    }

    internal sealed class ConvStage : nn.Module<Tensor, Tensor>, IBinaryWeights
    {
        private readonly Parameter weight;
        private readonly BatchNorm2d bn;

        private readonly bool channelsLast;
        private readonly bool bf16;
        private readonly bool signsInBf16;
        private readonly bool binarized;

        public ConvStage(int inChannels, ConvSpec spec, bool first, int padValue, bool channelsLast = false, bool bf16 = false, bool binarized = true, int poolSize = 0)
            : base(nameof(ConvStage))
        {
            PoolSize = poolSize;
            this.binarized = binarized;
            this.channelsLast = channelsLast;
            // The first layer sees pixel codes, whose sums reach 255·k·k·C: keep them exact in float32. Its signs
            // feed a binary conv, so they are made in bfloat16 all the same.
            this.bf16 = bf16 && !first;
            signsInBf16 = bf16 && binarized;
            Spec = spec;
            IsFirst = first;
            PadValue = first ? 0 : padValue;
            weight = nn.Parameter(LatentInit(spec.OutChannels, inChannels, spec.Kernel, spec.Kernel));
            bn = nn.BatchNorm2d(spec.OutChannels);
            RegisterComponents();
        }

        public ConvSpec Spec { get; }

        public bool IsFirst { get; }

        /// <summary>The value the padded border holds: 0 for the first layer (pixel codes), ±1 after it.</summary>
        public int PadValue { get; }

        public Parameter Weight => weight;

        public BatchNorm2d Norm => bn;

        /// <summary>The max-pool this stage applies to its sums before batch norm (<see cref="PoolBeforeNorm"/>); 0 for none.</summary>
        public int PoolSize { get; }

        public override Tensor forward(Tensor x) => Normalize(Sums(x));

        /// <summary>The conv's sums over the padded input, max-pooled when the stage pools before batch norm.</summary>
        internal Tensor Sums(Tensor x)
        {
            var w = StageWeights(weight, binarized);
            if (channelsLast)
            {
                // With input and weights channels-last, libtorch's CPU conv picks its NHWC kernels.
                w = ToChannelsLast(w);
            }
            int p = Spec.Padding;
            if (p > 0 && PadValue != 0)
            {
                x = nn.functional.pad(x, [p, p, p, p], value: PadValue);
                p = 0;
            }
            var y = Convolve(x, w, Spec.Stride, p, MultipliesInBf16);
            return PoolSize > 0 ? nn.functional.max_pool2d(y, PoolSize) : y;
        }

        /// <summary>Batch norm, then the activation, of <see cref="Sums"/>.</summary>
        internal Tensor Normalize(Tensor sums) => Activate(bn.forward(sums), binarized, MakesSignsInBf16 ? bfloat16 : null);

        /// <summary>Whether the next forward multiplies in bfloat16: every conv but the first, and only while training.</summary>
        internal bool MultipliesInBf16 => bf16 && training;

        /// <summary>Whether the next forward makes its signs in bfloat16: in a network training in it, every conv stage.</summary>
        internal bool MakesSignsInBf16 => signsInBf16 && training;

        /// <summary>The conv's sums: in bfloat16 when it multiplies in bfloat16, else in x's dtype.</summary>
        internal static Tensor Convolve(Tensor x, Tensor w, long stride, long padding, bool inBf16) => inBf16
            ? nn.functional.conv2d(x.to(bfloat16), w.to(bfloat16), null, [stride, stride], [padding, padding])
            : nn.functional.conv2d(x, w, null, [stride, stride], [padding, padding]);
    }

    /// <summary>Stands where a pool was when the conv stage before it pools (<see cref="PoolBeforeNorm"/>).</summary>
    internal sealed class PooledInConvStage : nn.Module<Tensor, Tensor>
    {
        public PooledInConvStage()
            : base(nameof(PooledInConvStage))
        {
        }

        public override Tensor forward(Tensor x) => x;
    }

    internal sealed class DenseStage : nn.Module<Tensor, Tensor>, IBinaryWeights
    {
        private readonly Parameter weight;
        private readonly BatchNorm1d bn;
        private readonly bool binarized;

        public DenseStage(int inFeatures, int outFeatures, bool binarized = true)
            : base(nameof(DenseStage))
        {
            this.binarized = binarized;
            weight = nn.Parameter(LatentInit(outFeatures, inFeatures));
            bn = nn.BatchNorm1d(outFeatures);
            RegisterComponents();
        }

        public Parameter Weight => weight;

        public BatchNorm1d Norm => bn;

        public override Tensor forward(Tensor x)
        {
            return Activate(bn.forward(nn.functional.linear(DenseInput(x, weight), StageWeights(weight, binarized))), binarized);
        }
    }

    internal sealed class OutputStage : nn.Module<Tensor, Tensor>, IBinaryWeights
    {
        private readonly Parameter weight;
        private readonly Parameter logScale;
        private readonly bool binarized;

        public OutputStage(int inFeatures, int classes, bool binarized = true)
            : base(nameof(OutputStage))
        {
            this.binarized = binarized;
            weight = nn.Parameter(LatentInit(classes, inFeatures));
            // A positive learned temperature for the loss only: it scales every score alike, so argmax ignores it.
            logScale = nn.Parameter(tensor(-0.5 * Math.Log(inFeatures), dtype: float32));
            RegisterComponents();
        }

        public Parameter Weight => weight;

        public Parameter LogScale => logScale;

        /// <summary>The integer scores (as floats), before the temperature.</summary>
        public Tensor Scores(Tensor x) => nn.functional.linear(DenseInput(x, weight), StageWeights(weight, binarized));

        public override Tensor forward(Tensor x) => Scores(x) * logScale.exp();
    }
}
