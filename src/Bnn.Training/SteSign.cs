using TorchSharp;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>
/// Sign with a straight-through estimator (Hubara et al. 2016, "Binarized Neural Networks").
/// Forward: q = +1 if x ≥ 0 else −1, so sign(0) = +1 as in the engine.
/// Backward: ∂L/∂x = ∂L/∂q · 1{|x| ≤ 1}, the gradient of hardtanh, cut off outside [−1, 1].
/// The signs may be asked for in another dtype than x's: ±1 is exact in any, and a sign whose next consumer
/// multiplies in bfloat16 then costs half the bytes through pooling, padding and their gradients. The gradient
/// returned for x is always in x's dtype.
/// </summary>
internal sealed class SteSign : autograd.SingleTensorFunction<SteSign>
{
    private const string InputType = "input dtype";

    public override string Name => nameof(SteSign);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        // apply(x, signType), always both: backward answers for two arguments.
        var (x, signType) = ((Tensor)vars[0], (ScalarType)vars[1]);
        // Backward needs only where |x| ≤ 1: a byte per element, where keeping x would hold four.
        ctx.save_for_backward([x.abs().le(1.0)]);
        ctx.save_data(InputType, x.dtype);
        return Binarize(x, signType);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        var inside = ctx.get_saved_variables()[0];
        // Multiplying by 0 or 1 is exact in any dtype, so the cast may come after it. The sign's dtype, the
        // second argument of apply, takes no gradient.
        return [grad_output.mul(inside).to_type((ScalarType)ctx.get_data(InputType)), null!];
    }

    /// <summary>
    /// Sign with the estimator where a gradient can flow, the forward map alone where none can (evaluation, a
    /// teacher, validation): a custom function's node costs a managed context per call even when no graph is built.
    /// </summary>
    /// <param name="x">The values to binarize.</param>
    /// <param name="signType">The dtype of the signs; x's when null.</param>
    public static Tensor Sign(Tensor x, ScalarType? signType = null)
    {
        var type = signType ?? x.dtype;
        return is_grad_enabled() && x.requires_grad ? apply(x, type) : Binarize(x, type);
    }

    /// <summary>The forward map alone: +1 where x ≥ 0, −1 elsewhere, in x's dtype or <paramref name="signType"/>.</summary>
    public static Tensor Binarize(Tensor x, ScalarType? signType = null)
    {
        var type = signType ?? x.dtype;
        // One pass over x and one write of the result, in x's memory layout; the two 0-dim operands broadcast.
        return where(x.ge(0), tensor(1.0, type), tensor(-1.0, type));
    }
}
