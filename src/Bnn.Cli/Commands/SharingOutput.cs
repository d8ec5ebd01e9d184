using System.Globalization;
using System.Text;
using System.Text.Json;
using Bnn.Cost;
using Bnn.Sharing;

namespace Bnn.Cli;

/// <summary>Accuracy figures measured for a share run (null where not measured).</summary>
internal sealed record SharingAccuracy(double? Baseline, double? Shared, double? ValidationBaseline, double? ValidationShared);

/// <summary>The text table and the JSON of analyze/share (field names documented in docs/cost-model.md).</summary>
internal static class SharingOutput
{
    public static string RenderTable(SharingReport report)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(inv, $"{"layer",-8} {"K",5} {"C",5} {"out",7} {"classes/ch",11} {"max",4} {"repeat%",8} {"inverse%",9} {"exact",8} {"ex-sim",8} {"approx",8}   (tap-op reduction vs dense)");
        foreach (var r in report.Rows)
        {
            var a = r.Analysis;
            sb.AppendLine(inv, $"{r.Name + (a.IsInputLayer ? "*" : ""),-8} {a.OutChannels,5} {a.InChannels,5} {$"{a.OutH}x{a.OutW}",7} {a.MeanClassesPerChannel,11:F1} {a.MaxClassesPerChannel,4} {Pct(a.Repeated, a.Filters),8} {Pct(a.Inverse, a.Filters),9} {Saving(r.Exact.TapOps, r.BaselineTapOps),8} {Saving(r.ExactSimilar.TapOps, r.BaselineTapOps),8} {(r.Approximate is { } p ? Saving(p.TapOps, r.BaselineTapOps) : "-"),8}");
        }
        sb.AppendLine("* first layer (pixel input), also reported separately below");
        foreach (var (label, input) in new[] { ("binary conv layers", false), ("all conv layers", true) })
        {
            long baseline = report.BaselineTapOps(input);
            double conv2d = report.BaselineConv2d(input);
            sb.AppendLine(inv, $"{label}: baseline {baseline:N0} tap ops, {conv2d:N0} 2-D convolutions, {report.AccumulateAdds(input):N0} accumulate adds (every plan)");
            foreach (var (mode, select) in Modes)
            {
                if (report.TapOps(select, input) is long t && report.Conv2d(select, input) is double c)
                {
                    sb.AppendLine(inv, $"  {mode,-22} {t,16:N0} tap ops ({Saving(t, baseline)} fewer)   {c,12:N1} 2-D convs ({Saving(c, conv2d)} fewer)");
                }
            }
        }
        long bound = report.Rows.Sum(r => r.Analysis.DerivationLowerBound * r.Analysis.OutH * r.Analysis.OutW);
        sb.AppendLine(inv, $"lower bound for any lossless derivation plan (Steiner intermediates included): {bound:N0} tap ops; exact-similar is {((double)report.TapOps(r => r.ExactSimilar)!.Value / bound) - 1:P2} above it");
        var first = report.Rows.FirstOrDefault(r => r.Analysis.IsInputLayer);
        if (first is not null)
        {
            sb.AppendLine(inv, $"first layer alone: baseline {first.BaselineTapOps:N0}; exact {Saving(first.Exact.TapOps, first.BaselineTapOps)} fewer, exact-similar {Saving(first.ExactSimilar.TapOps, first.BaselineTapOps)} fewer");
        }
        return sb.ToString();
    }

    public static readonly (string Name, Func<LayerSharingRow, PlanCost?> Select)[] Modes =
    [
        ("exact", r => r.Exact),
        ("exact-similar", r => r.ExactSimilar),
        ("approximate-merge-only", r => r.ApproximateMergeOnly),
        ("approximate", r => r.Approximate),
    ];

    public static void WriteJson(Utf8JsonWriter w, string modelPath, SharingReport report, SharingAccuracy? accuracy, Action<Utf8JsonWriter>? extra = null)
    {
        w.WriteStartObject();
        w.WriteString("model", modelPath);
        w.WriteStartArray("layers");
        foreach (var r in report.Rows)
        {
            var a = r.Analysis;
            w.WriteStartObject();
            w.WriteString("name", r.Name);
            w.WriteNumber("index", a.Index);
            w.WriteBoolean("first_layer", a.IsInputLayer);
            w.WriteNumber("K", a.OutChannels);
            w.WriteNumber("C", a.InChannels);
            w.WriteNumber("kh", a.KernelH);
            w.WriteNumber("kw", a.KernelW);
            w.WriteNumber("out_h", a.OutH);
            w.WriteNumber("out_w", a.OutW);
            w.WriteNumber("baseline_tap_ops", r.BaselineTapOps);
            w.WriteNumber("distinct_classes", a.DistinctClasses);
            w.WriteNumber("mean_classes_per_channel", a.MeanClassesPerChannel);
            w.WriteNumber("max_classes_per_channel", a.MaxClassesPerChannel);
            w.WriteNumber("repeated", a.Repeated);
            w.WriteNumber("inverse", a.Inverse);
            w.WriteNumber("accumulate_adds", r.AccumulateAdds);
            w.WriteNumber("derivation_lower_bound_tap_ops", a.DerivationLowerBound * a.OutH * a.OutW);
            WriteHistogram(w, "class_frequency_histogram", a.ClassFrequencyHistogram);
            WriteHistogram(w, "nearest_distance_histogram", a.NearestDistanceHistogram);
            w.WriteStartObject("tap_ops");
            foreach (var (mode, select) in Modes)
            {
                WriteNullable(w, Key(mode), select(r)?.TapOps);
            }
            w.WriteEndObject();
            w.WriteStartObject("conv2d");
            w.WriteNumber("baseline", (double)a.Filters);
            foreach (var (mode, select) in Modes)
            {
                WriteNullable(w, Key(mode), select(r)?.Conv2d);
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        foreach (var (name, input) in new[] { ("totals", false), ("totals_with_first_layer", true) })
        {
            w.WriteStartObject(name);
            w.WriteNumber("baseline_tap_ops", report.BaselineTapOps(input));
            w.WriteStartObject("tap_ops");
            foreach (var (mode, select) in Modes)
            {
                WriteNullable(w, Key(mode), report.TapOps(select, input));
            }
            w.WriteEndObject();
            w.WriteStartObject("conv2d");
            w.WriteNumber("baseline", report.BaselineConv2d(input));
            foreach (var (mode, select) in Modes)
            {
                WriteNullable(w, Key(mode), report.Conv2d(select, input));
            }
            w.WriteEndObject();
            w.WriteNumber("accumulate_adds", report.AccumulateAdds(input));
            w.WriteEndObject();
        }
        if (accuracy is not null)
        {
            w.WriteStartObject("accuracy");
            WriteNullable(w, "baseline", accuracy.Baseline);
            WriteNullable(w, "shared", accuracy.Shared);
            WriteNullable(w, "validation_baseline", accuracy.ValidationBaseline);
            WriteNullable(w, "validation_shared", accuracy.ValidationShared);
            w.WriteEndObject();
        }
        extra?.Invoke(w);
        w.WriteEndObject();
    }

    private static string Key(string mode) => mode.Replace('-', '_');

    private static void WriteHistogram(Utf8JsonWriter w, string name, long[] histogram)
    {
        w.WriteStartArray(name);
        foreach (var v in histogram)
        {
            w.WriteNumberValue(v);
        }
        w.WriteEndArray();
    }

    private static void WriteNullable(Utf8JsonWriter w, string name, double? value)
    {
        if (value is double v)
        {
            w.WriteNumber(name, v);
        }
        else
        {
            w.WriteNull(name);
        }
    }

    private static void WriteNullable(Utf8JsonWriter w, string name, long? value)
    {
        if (value is long v)
        {
            w.WriteNumber(name, v);
        }
        else
        {
            w.WriteNull(name);
        }
    }

    private static string Pct(long part, long whole) => whole == 0 ? "-" : ((double)part / whole).ToString("P1", CultureInfo.InvariantCulture);

    public static string Saving(double cost, double baseline) => baseline == 0 ? "-" : (1 - (cost / baseline)).ToString("P1", CultureInfo.InvariantCulture);
}
