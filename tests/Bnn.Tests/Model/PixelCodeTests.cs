using Bnn.Model;

namespace Bnn.Tests.Model;

/// <summary>The pixel code's vectorized 16-bit encoder against <see cref="PixelCode.Encode"/>, over every length 0-256.</summary>
public sealed class PixelCodeTests
{
    [Fact]
    public void EncodeChannel_ShortLevels_EqualTheScalarCode_AtEveryLength()
    {
        var layer = (ConvLayer)RandomModels.Create([new ConvSpec(8, 3, 1, 1), new OutputSpec(2)], new Shape(3, 4, 4), seed: 1).Layers[0];
        for (int length = 0; length <= 256; length++)
        {
            var pixels = new byte[length];
            // Every byte value shows up at every lane position somewhere in the longer runs.
            for (int i = 0; i < length; i++)
            {
                pixels[i] = (byte)((i * 37) + length);
            }
            var levels = Enumerable.Repeat((short)12345, length + 1).ToArray();
            PixelCode.EncodeChannel(layer, 1, pixels, levels.AsSpan(0, length));
            Assert.Equal(pixels.Select(p => (short)PixelCode.Encode(p)), levels.Take(length));
            Assert.Equal(12345, levels[length]);
        }
    }
}
