using Bnn.Engine.Kernels;

namespace Bnn.Tests.Engine;

public sealed class IntRowsTests
{
    [Fact]
    public void RowOps_AllLengths0To256_MatchPlainLoops()
    {
        var rng = new Random(42);
        for (int n = 0; n <= 256; n++)
        {
            var src = Enumerable.Range(0, n).Select(_ => rng.Next(-5000, 5000)).ToArray();
            var dst = Enumerable.Range(0, n).Select(_ => rng.Next(-5000, 5000)).ToArray();
            int scale = rng.Next(-3, 4);
            var expectedAdd = dst.Select((d, i) => d + (scale * src[i])).ToArray();
            var expectedScale = src.Select(v => scale * v).ToArray();

            var add = (int[])dst.Clone();
            IntRows.AddScaled(src, scale, add);
            var scaled = new int[n];
            IntRows.Scale(src, scale, scaled);
            var negated = new int[n];
            IntRows.Negate(src, negated);

            Assert.Equal(expectedAdd, add);
            Assert.Equal(expectedScale, scaled);
            Assert.Equal(src.Select(v => -v).ToArray(), negated);
        }
    }

    [Fact]
    public void AddScaled_ShortDestination_Throws() =>
        Assert.Throws<ArgumentException>(() => IntRows.AddScaled(new int[5], 1, new int[4]));
}
