using Bnn.Engine.Kernels;

namespace Bnn.Tests.Engine;

/// <summary>The layout changes of the plane conv against their definitions.</summary>
public sealed class PlaneBitsTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Transpose64_SwapsRowsAndColumns(int seed)
    {
        var rng = new Random(seed);
        var rows = Enumerable.Range(0, 64).Select(_ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40)).ToArray();
        var transposed = rows.ToArray();
        PlaneBits.Transpose64(transposed);
        for (int i = 0; i < 64; i++)
        {
            for (int j = 0; j < 64; j++)
            {
                Assert.Equal((rows[i] >> j) & 1, (transposed[j] >> i) & 1);
            }
        }
        PlaneBits.Transpose64(transposed);
        Assert.Equal(rows, transposed);
    }

    [Fact]
    public void Transpose64_RejectsOtherSizes() => Assert.Throws<ArgumentException>(() => PlaneBits.Transpose64(new ulong[63]));

    public static TheoryData<ulong> Masks() => new(0UL, ulong.MaxValue, 1UL, 1UL << 63, 0x8000_0000_0000_0001UL, 0x0123_4567_89AB_CDEFUL, 0xF0F0_0F0F_AA55_33CCUL);

    [Theory]
    [MemberData(nameof(Masks))]
    public void Expand_GivesMinusOneForSetBits_InBothLaneWidths(ulong mask)
    {
        var bytes = new sbyte[64];
        var shorts = new short[64];
        PlaneBits.Expand(mask, ref bytes[0]);
        PlaneBits.Expand(mask, ref shorts[0]);
        for (int i = 0; i < 64; i++)
        {
            int expected = ((mask >> i) & 1) != 0 ? -1 : 1;
            Assert.Equal(expected, bytes[i]);
            Assert.Equal(expected, shorts[i]);
        }
    }
}
