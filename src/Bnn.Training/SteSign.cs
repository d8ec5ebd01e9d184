using TorchSharp;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>
/// Sign with a straight-through estimator (Hubara et al. 2016, "Binarized Neural Networks").
/// Forward: q = +1 if x ≥ 0 else −1, so sign(0) = +1 as in the engine.
/// Backward: ∂L/∂x = ∂L/∂q · 1{|x| ≤ 1}, the gradient of hardtanh, cut off outside [−1, 1].
/// </summary>
internal sealed class SteSign : autograd.SingleTensorFunction<SteSign>
{
    public override string Name => nameof(SteSign);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        ctx.save_for_backward([x]);
        return Binarize(x);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        var x = ctx.get_saved_variables()[0];
        return [grad_output * x.abs().le(1.0).to_type(grad_output.dtype)];
    }

    /// <summary>
    /// Sign with the estimator where a gradient can flow, the forward map alone where none can (evaluation, a
    /// teacher, validation): a custom function's node costs a managed context per call even when no graph is built.
    /// </summary>
    public static Tensor Sign(Tensor x) => is_grad_enabled() && x.requires_grad ? apply(x) : Binarize(x);

    /// <summary>The forward map alone: +1 where x ≥ 0, −1 elsewhere, in x's dtype.</summary>
    public static Tensor Binarize(Tensor x) => where(x.ge(0), ones_like(x), ones_like(x).neg());
}
