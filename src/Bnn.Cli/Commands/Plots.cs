using Bnn.Sharing;
using Bnn.Training;

namespace Bnn.Cli;

/// <summary>The PNG plots of `bnn report` and `bnn checkpoint-info`.</summary>
internal static class Plots
{
    public static void ReductionBars(SharingReport report, string path)
    {
        var plot = new ScottPlot.Plot();
        var modes = SharingOutput.Modes;
        var colors = new[] { ScottPlot.Colors.SteelBlue, ScottPlot.Colors.DarkOrange, ScottPlot.Colors.Gray, ScottPlot.Colors.SeaGreen };
        for (int m = 0; m < modes.Length; m++)
        {
            var bars = new List<ScottPlot.Bar>();
            for (int i = 0; i < report.Rows.Count; i++)
            {
                var row = report.Rows[i];
                if (modes[m].Select(row) is { } cost)
                {
                    bars.Add(new ScottPlot.Bar { Position = (i * (modes.Length + 1)) + m, Value = 100 * (1 - (cost.Conv2d / row.Analysis.Filters)), FillColor = colors[m] });
                }
            }
            var series = plot.Add.Bars(bars);
            series.LegendText = modes[m].Name;
        }
        plot.Axes.Bottom.SetTicks(
            Enumerable.Range(0, report.Rows.Count).Select(i => (double)((i * (modes.Length + 1)) + 1)).ToArray(),
            report.Rows.Select(r => r.Name).ToArray());
        plot.Axes.Left.Label.Text = "fewer 2-D convolutions (%)";
        plot.Title("Reduction per conv layer");
        plot.ShowLegend(ScottPlot.Edge.Bottom);
        plot.Axes.SetLimitsY(0, 100);
        plot.SavePng(path, 900, 500);
    }

    public static void AccuracyVersusReduction(List<(int Radius, double Reduction, double Merged, double? Recalibrated)> sweep,
        (double Reduction, double Accuracy) chosen, double baseline, string path)
    {
        var plot = new ScottPlot.Plot();
        var xs = sweep.Select(p => 100 * p.Reduction).ToArray();
        var merged = plot.Add.Scatter(xs, sweep.Select(p => 100 * p.Merged).ToArray());
        merged.LegendText = "merged (same radius in every layer)";
        if (sweep.All(p => p.Recalibrated.HasValue))
        {
            var recal = plot.Add.Scatter(xs, sweep.Select(p => 100 * p.Recalibrated!.Value).ToArray());
            recal.LegendText = "merged + BN recalibration";
        }
        var auto = plot.Add.Marker(100 * chosen.Reduction, 100 * chosen.Accuracy);
        auto.LegendText = "automatic per-layer radii";
        auto.Size = 12;
        var line = plot.Add.HorizontalLine(100 * baseline);
        line.LegendText = "dense";
        plot.Axes.Bottom.Label.Text = "fewer 2-D convolutions in the conv layers (%)";
        plot.Axes.Left.Label.Text = "validation accuracy (%)";
        plot.Title("Accuracy versus reduction");
        plot.ShowLegend(ScottPlot.Edge.Bottom);
        plot.SavePng(path, 900, 500);
    }

    /// <summary>Training and validation accuracy per epoch, the learning rate on the right axis, the best epoch marked.</summary>
    public static void TrainingCurves(IReadOnlyList<EpochRecord> history, int bestEpoch, string path)
    {
        var plot = new ScottPlot.Plot();
        var epochs = history.Select(r => (double)r.Epoch).ToArray();
        plot.Add.ScatterLine(epochs, history.Select(r => 100 * r.TrainAccuracy).ToArray()).LegendText = "training (augmented, in training mode)";
        plot.Add.ScatterLine(epochs, history.Select(r => 100 * r.ValidationAccuracy).ToArray()).LegendText = "validation";
        var lr = plot.Add.ScatterLine(epochs, history.Select(r => r.LearningRate).ToArray());
        lr.LegendText = "learning rate (right axis)";
        lr.Axes.YAxis = plot.Axes.Right;
        lr.LinePattern = ScottPlot.LinePattern.Dotted;
        if (bestEpoch > 0)
        {
            plot.Add.VerticalLine(bestEpoch).LegendText = $"best validation (epoch {bestEpoch})";
        }
        plot.Axes.Bottom.Label.Text = "epoch";
        plot.Axes.Left.Label.Text = "accuracy (%)";
        plot.Axes.Right.Label.Text = "learning rate";
        plot.Axes.SetLimitsY(0, 1.05 * history.Max(r => r.LearningRate), plot.Axes.Right);
        plot.Title("Training curves");
        plot.ShowLegend(ScottPlot.Edge.Bottom);
        plot.SavePng(path, 900, 500);
    }
}
