using Bnn.Model;

namespace Bnn.Sharing;

/// <summary>
/// The 2-D filter statistics of one conv layer: how many distinct classes each input channel has, how many filters
/// are repeats or inverses of an earlier one, how often classes occur, and how far apart they are.
/// </summary>
public sealed record LayerAnalysis
{
    /// <summary>Layer index in the model.</summary>
    public required int Index { get; init; }

    /// <summary>K.</summary>
    public required int OutChannels { get; init; }

    /// <summary>C.</summary>
    public required int InChannels { get; init; }

    /// <summary>Kernel height.</summary>
    public required int KernelH { get; init; }

    /// <summary>Kernel width.</summary>
    public required int KernelW { get; init; }

    /// <summary>Output height.</summary>
    public required int OutH { get; init; }

    /// <summary>Output width.</summary>
    public required int OutW { get; init; }

    /// <summary>Whether this is the first (pixel-input) layer.</summary>
    public required bool IsInputLayer { get; init; }

    /// <summary>Distinct classes summed over input channels.</summary>
    public required long DistinctClasses { get; init; }

    /// <summary>Mean distinct classes per channel.</summary>
    public required double MeanClassesPerChannel { get; init; }

    /// <summary>Maximum distinct classes in one channel.</summary>
    public required int MaxClassesPerChannel { get; init; }

    /// <summary>Filters equal to an earlier filter of the same channel.</summary>
    public required long Repeated { get; init; }

    /// <summary>Filters equal to the negation of an earlier filter (and to no earlier filter).</summary>
    public required long Inverse { get; init; }

    /// <summary>[f] = number of (channel, class) pairs that f filters share (index 0 unused).</summary>
    public required long[] ClassFrequencyHistogram { get; init; }

    /// <summary>[d] = number of classes whose nearest other class in the channel is at distance d (index 0: alone).</summary>
    public required long[] NearestDistanceHistogram { get; init; }

    /// <summary>
    /// A lower bound on the tap ops per output position of any lossless derivation plan, Steiner intermediates
    /// included: Σ_c (n + m_c − 1), since every channel computes at least one result from scratch and every other
    /// present class costs at least one corrected tap. An exact-similar plan that meets it cannot be improved.
    /// </summary>
    public required long DerivationLowerBound { get; init; }

    /// <summary>Total 2-D filters K·C.</summary>
    public long Filters => (long)OutChannels * InChannels;

    /// <summary>Analyzes layer <paramref name="index"/> of a model.</summary>
    public static LayerAnalysis Analyze(BnnModel model, int index)
    {
        ArgumentNullException.ThrowIfNull(model);
        var layer = (ConvLayer)model.Layers[index];
        int n = layer.KernelH * layer.KernelW;
        var codes = FilterCode.Codes(layer);
        long distinct = 0, repeated = 0, inverse = 0, lowerBound = 0;
        int max = 0;
        var frequency = new long[layer.OutChannels + 1];
        var nearest = new long[(n / 2) + 1];
        foreach (var channel in codes)
        {
            var seen = new HashSet<int>();
            var counts = new Dictionary<int, int>();
            foreach (var code in channel)
            {
                int cls = FilterCode.Class(code, n);
                if (seen.Contains(code))
                {
                    repeated++;
                }
                else if (counts.ContainsKey(cls))
                {
                    inverse++;
                }
                seen.Add(code);
                counts[cls] = counts.GetValueOrDefault(cls) + 1;
            }
            distinct += counts.Count;
            lowerBound += n + counts.Count - 1;
            max = Math.Max(max, counts.Count);
            foreach (var f in counts.Values)
            {
                frequency[f]++;
            }
            var classes = counts.Keys.ToArray();
            foreach (var u in classes)
            {
                int best = 0;
                foreach (var v in classes)
                {
                    if (u != v)
                    {
                        int d = FilterCode.Distance(u, v, n);
                        best = best == 0 ? d : Math.Min(best, d);
                    }
                }
                nearest[best]++;
            }
        }
        var outShape = model.OutputShapes[index];
        return new LayerAnalysis
        {
            Index = index, OutChannels = layer.OutChannels, InChannels = layer.InChannels, KernelH = layer.KernelH, KernelW = layer.KernelW,
            OutH = outShape.Height, OutW = outShape.Width, IsInputLayer = layer.IsInputLayer,
            DistinctClasses = distinct, MeanClassesPerChannel = (double)distinct / layer.InChannels, MaxClassesPerChannel = max,
            Repeated = repeated, Inverse = inverse, DerivationLowerBound = lowerBound, ClassFrequencyHistogram = frequency, NearestDistanceHistogram = nearest,
        };
    }
}
