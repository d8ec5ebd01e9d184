using Bnn.Engine.Kernels;

namespace Bnn.Tests.Engine;

/// <summary>The layout changes of the plane conv against their definitions.</summary>
public sealed class PlaneBitsTests
{
    public static TheoryData<string, int> Transposes()
    {
        var data = new TheoryData<string, int>();
        string[] paths = ["dispatch", "scalar", .. PlaneBits.SimdTranspose ? ["simd"] : Array.Empty<string>(), .. PlaneBits.Avx2Transpose ? ["avx2"] : Array.Empty<string>()];
        foreach (var path in paths)
        {
            foreach (int seed in new[] { 1, 2, 3 })
            {
                data.Add(path, seed);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Transposes))]
    public void Transpose64_SwapsRowsAndColumns(string path, int seed)
    {
        Action<ulong[]> transpose = path switch
        {
            "scalar" => rows => PlaneBits.Transpose64Scalar(rows),
            "simd" => rows => PlaneBits.Transpose64Simd(rows),
            "avx2" => rows => PlaneBits.Transpose64Avx2(rows),
            _ => rows => PlaneBits.Transpose64(rows),
        };
        var rng = new Random(seed);
        var rows = Enumerable.Range(0, 64).Select(_ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40)).ToArray();
        var transposed = rows.ToArray();
        transpose(transposed);
        for (int i = 0; i < 64; i++)
        {
            for (int j = 0; j < 64; j++)
            {
                Assert.Equal((rows[i] >> j) & 1, (transposed[j] >> i) & 1);
            }
        }
        transpose(transposed);
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
