using Bnn.Model;

namespace Bnn.Sharing;

/// <summary>
/// One 2-D result to compute on one input channel: the class code, and either computed from scratch
/// (<see cref="Parent"/> = −1, n tap ops per output position) or derived from an earlier node of the same channel by
/// correcting <see cref="Cost"/> taps (d tap ops per output position).
/// </summary>
/// <param name="Channel">Input channel.</param>
/// <param name="Code">The n-bit code computed (a class representative, or a Steiner intermediate).</param>
/// <param name="Parent">Index of the node it is derived from, or −1 for from scratch.</param>
public readonly record struct PlanNode(int Channel, int Code, int Parent)
{
    /// <summary>Whether this node is computed from scratch.</summary>
    public bool IsRoot => Parent < 0;
}

/// <summary>
/// How a conv layer computes its 2-D results. Nodes are grouped by channel and each parent precedes its children.
/// Every filter (k, c) reads node <see cref="Assignment"/>[k, c] with sign <see cref="Signs"/>[k, c]: the output
/// accumulator is Σ_c sign·R(node). A plan is valid for exactly the weights it was built from; see
/// <see cref="Validate"/>.
/// </summary>
public sealed class LayerPlan
{
    /// <summary>Creates a plan; call <see cref="Validate"/> against the layer before use.</summary>
    public LayerPlan(string mode, int taps, IReadOnlyList<PlanNode> nodes, int[] assignment, sbyte[] signs)
    {
        Mode = mode;
        Taps = taps;
        Nodes = nodes;
        Assignment = assignment;
        Signs = signs;
    }

    /// <summary>exact, exact-similar or approximate (how it was planned).</summary>
    public string Mode { get; }

    /// <summary>n = kh·kw.</summary>
    public int Taps { get; }

    /// <summary>The 2-D results to compute, in execution order.</summary>
    public IReadOnlyList<PlanNode> Nodes { get; }

    /// <summary>Node index per filter, [k·C + c].</summary>
    public int[] Assignment { get; }

    /// <summary>±1 per filter, [k·C + c]: whether the filter is the node's code or its complement.</summary>
    public sbyte[] Signs { get; }

    /// <summary>
    /// How derived node <paramref name="i"/> follows from its parent u: it equals u (or −u when
    /// <c>Negated</c>) except on the taps whose bits are set in <c>Corrected</c>, whose count is d = min(H, n − H).
    /// Every engine derives R_v = ±R_u ∓ 2·Σ_{t∈Corrected} u_t·x_t from this.
    /// </summary>
    public (bool Negated, int Corrected) Derivation(int i)
    {
        var node = Nodes[i];
        int parentCode = Nodes[node.Parent].Code;
        int h = FilterCode.Hamming(parentCode, node.Code);
        bool negated = h > Taps - h;
        return (negated, negated ? parentCode ^ node.Code ^ FilterCode.Mask(Taps) : parentCode ^ node.Code);
    }

    /// <summary>The tap-op cost of node <paramref name="i"/> per output position: n from scratch, else d.</summary>
    public int NodeCost(int i)
    {
        var node = Nodes[i];
        return node.IsRoot ? Taps : FilterCode.Distance(node.Code, Nodes[node.Parent].Code, Taps);
    }

    /// <summary>Number of nodes computed from scratch.</summary>
    public int Roots => Nodes.Count(n => n.IsRoot);

    /// <summary>
    /// Checks that the plan reproduces <paramref name="layer"/>'s weights exactly: parents precede children on the
    /// same channel, and every filter equals its node's code up to its sign.
    /// </summary>
    public void Validate(ConvLayer layer, string source)
    {
        ArgumentNullException.ThrowIfNull(layer);
        int n = layer.KernelH * layer.KernelW;
        int filters = layer.OutChannels * layer.InChannels;
        if (n != Taps || Assignment.Length != filters || Signs.Length != filters)
        {
            throw new Data.BnnDataException($"{source}: sharing plan does not match the layer's shape");
        }
        for (int i = 0; i < Nodes.Count; i++)
        {
            var node = Nodes[i];
            if (node.Channel < 0 || node.Channel >= layer.InChannels || node.Code < 0 || node.Code > FilterCode.Mask(n)
                || node.Parent >= i || (node.Parent >= 0 && Nodes[node.Parent].Channel != node.Channel))
            {
                throw new Data.BnnDataException($"{source}: sharing plan node {i} is invalid");
            }
        }
        for (int k = 0; k < layer.OutChannels; k++)
        {
            for (int c = 0; c < layer.InChannels; c++)
            {
                int f = (k * layer.InChannels) + c;
                int node = Assignment[f];
                if (node < 0 || node >= Nodes.Count || Nodes[node].Channel != c || Signs[f] is not (1 or -1)
                    || FilterCode.WithSign(Nodes[node].Code, Signs[f], n) != FilterCode.Code(layer, k, c))
                {
                    throw new Data.BnnDataException($"{source}: sharing plan does not reproduce filter ({k}, {c})");
                }
            }
        }
    }
}
