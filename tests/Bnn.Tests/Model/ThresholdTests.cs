using Bnn.Model;

namespace Bnn.Tests.Model;

public sealed class ThresholdTests
{
    [Fact]
    public void Fold_MatchesBatchNormThenSign_ForEveryAccumulatorInRange()
    {
        // Given batch norms with positive, negative and zero scales, and thresholds on and between integers
        var rng = new Random(7);
        const int n = 400;
        var gamma = new float[n];
        var beta = new float[n];
        var mean = new float[n];
        var variance = new float[n];
        for (int j = 0; j < n; j++)
        {
            gamma[j] = j % 10 == 0 ? 0f : (float)((rng.NextDouble() - 0.5) * 4);
            beta[j] = j % 7 == 0 ? 0f : (float)((rng.NextDouble() - 0.5) * 3);
            mean[j] = j % 5 == 0 ? rng.Next(-20, 20) : (float)((rng.NextDouble() - 0.5) * 40);
            variance[j] = (float)(rng.NextDouble() * 30);
        }
        var bn = new BatchNormParameters(gamma, beta, mean, variance, 1e-5f);

        // When folded
        var t = Threshold.Fold(bn);

        // Then every integer accumulator gives the sign of the real-valued batch norm (sign(0) = +1)
        for (int j = 0; j < n; j++)
        {
            for (int a = -60; a <= 60; a++)
            {
                double y = (gamma[j] * (a - (double)mean[j]) / Math.Sqrt((double)variance[j] + 1e-5f)) + beta[j];
                Assert.True((y >= 0) == t.IsPositive(j, a), $"channel {j}, acc {a}: y={y}");
            }
        }
    }

    [Fact]
    public void Fold_NegativeScale_FlipsTheComparison()
    {
        var bn = new BatchNormParameters([-1f], [0f], [3f], [1f], 0f);
        var t = Threshold.Fold(bn);
        Assert.True(t.IsPositive(0, 3));   // y = 0 → +1
        Assert.True(t.IsPositive(0, 2));
        Assert.False(t.IsPositive(0, 4));
    }
}
