using System.Numerics;
using Bnn.Engine.Kernels;

namespace Bnn.Tests.Engine;

public sealed class XorPopCountTests
{
    public static TheoryData<PopCountKernel> Kernels()
    {
        var data = new TheoryData<PopCountKernel>();
        foreach (var k in XorPopCount.Supported)
        {
            data.Add(k);
        }
        data.Add(PopCountKernel.Auto);
        return data;
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_AllLengths0To256_MatchesPlainLoop(PopCountKernel kernel)
    {
        var rng = new Random(42);
        for (int n = 0; n <= 256; n++)
        {
            var a = new ulong[n];
            var b = new ulong[n];
            for (int i = 0; i < n; i++)
            {
                a[i] = (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 63);
                b[i] = (ulong)rng.NextInt64();
            }
            int expected = 0;
            for (int i = 0; i < n; i++)
            {
                expected += BitOperations.PopCount(a[i] ^ b[i]);
            }
            Assert.Equal(expected, XorPopCount.Compute(a, b, kernel));
        }
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_AllOnes_CountsEveryBit(PopCountKernel kernel)
    {
        var a = Enumerable.Repeat(ulong.MaxValue, 37).ToArray();
        var b = new ulong[37];
        Assert.Equal(37 * 64, XorPopCount.Compute(a, b, kernel));
        Assert.Equal(0, XorPopCount.Compute(a, a, kernel));
    }

    [Fact]
    public void Compute_DifferentLengths_Throws() =>
        Assert.Throws<ArgumentException>(() => XorPopCount.Compute(new ulong[3], new ulong[4]));
}
