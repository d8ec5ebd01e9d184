using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Bnn.Data;
using Bnn.Engine;
using Bnn.Engine.Reference;
using Bnn.Model;

namespace Bnn.Tests.Model;

public sealed class ModelFileTests
{
    [Fact]
    public void SaveLoad_RoundTrip_PreservesWeightsNormsAndScores()
    {
        using var dir = new TempDirectory();
        var model = TestData.SmallModel(5, padValue: -1);
        ModelFile.Save(model, dir.File("m.bnn"));
        var loaded = ModelFile.Load(dir.File("m.bnn"));
        Assert.Equal(model.Layers.Count, loaded.Layers.Count);
        for (int i = 0; i < model.Layers.Count; i++)
        {
            Assert.Equal(model.OutputShapes[i], loaded.OutputShapes[i]);
        }
        var c = (ConvLayer)loaded.Layers[1];
        Assert.Equal(((ConvLayer)model.Layers[1]).Weights, c.Weights);
        Assert.Equal(-1, c.PadValue);
        Assert.Equal(((ConvLayer)model.Layers[1]).Norm.Variance, c.Norm.Variance);
        var images = TestData.RandomImages(3, 9);
        Assert.Equal(new ReferenceEngine(model).Run(images).Scores, new ReferenceEngine(loaded).Run(images).Scores);
        Assert.False(File.Exists(dir.File("m.bnn.tmp")));
    }

    [Fact]
    public void File_IsPlainSafetensors_WithBitPackedWeights()
    {
        // Readable without our code: a JSON header after an 8-byte length, tensors at the stated offsets.
        var model = TestData.SmallModel(6);
        var bytes = ModelFile.Write(model);
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!;
        Assert.Equal("bnn-model", (string?)header["__metadata__"]!["format"]);
        var weight = header["layers.1.weight"]!;
        Assert.Equal("U8", (string?)weight["dtype"]);
        var conv = (ConvLayer)model.Layers[1];
        Assert.Equal(conv.OutChannels, (int)weight["shape"]![0]!);
        Assert.Equal(((conv.TapsPerOutput) + 7) / 8, (int)weight["shape"]![1]!);
        long begin = (long)weight["data_offsets"]![0]!;
        byte first = bytes[8 + n + begin];
        // Bit 0 of byte 0 is filter 0, channel 0, tap (0,0); bit 1 means −1.
        Assert.Equal(conv.Weight(0, 0, 0, 0) < 0, (first & 1) == 1);
    }

    [Fact]
    public void Load_WrongMagic_IsRejected()
    {
        var bytes = Rewrite(ModelFile.Write(TestData.SmallModel(1)), h => h["__metadata__"]!["format"] = "something-else");
        var e = Assert.Throws<BnnDataException>(() => ModelFile.Read(bytes, "m.bnn"));
        Assert.Contains("not a bnn model file", e.Message);
    }

    [Fact]
    public void Load_RandomBytes_AreRejected()
    {
        var e = Assert.Throws<BnnDataException>(() => ModelFile.Read(Encoding.ASCII.GetBytes("GIF89a this is not a model at all"), "x.bnn"));
        Assert.Contains("x.bnn", e.Message);
    }

    [Fact]
    public void Load_WrongVersion_IsRejected()
    {
        var bytes = Rewrite(ModelFile.Write(TestData.SmallModel(1)), h => h["__metadata__"]!["format_version"] = "99");
        var e = Assert.Throws<BnnDataException>(() => ModelFile.Read(bytes, "m.bnn"));
        Assert.Contains("unsupported model format version '99'", e.Message);
    }

    [Fact]
    public void Load_EveryTruncation_IsRejectedCleanly()
    {
        var bytes = ModelFile.Write(TestData.SmallModel(2));
        for (int cut = 0; cut < bytes.Length; cut += Math.Max(1, bytes.Length / 97))
        {
            var e = Assert.Throws<BnnDataException>(() => ModelFile.Read(bytes[..cut], "m.bnn"));
            Assert.StartsWith("m.bnn", e.Message);
        }
    }

    [Fact]
    public void Load_ShapesThatDoNotChain_AreRejected()
    {
        var bytes = Rewrite(ModelFile.Write(TestData.SmallModel(3)), h =>
        {
            var arch = JsonNode.Parse((string)h["__metadata__"]!["architecture"]!)!;
            // A 1x1 pool instead of 2x2 keeps every tensor valid but feeds the dense layer 4x more inputs.
            arch["layers"]![2]!["size"] = 1;
            h["__metadata__"]!["architecture"] = arch.ToJsonString();
        });
        var e = Assert.Throws<BnnDataException>(() => ModelFile.Read(bytes, "m.bnn"));
        Assert.Contains("layer 4 (dense): expects", e.Message);
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void Load_NonFiniteParameters_AreRejected(float bad)
    {
        var bytes = ModelFile.Write(TestData.SmallModel(4));
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!;
        long begin = (long)header["layers.1.bn.mean"]!["data_offsets"]![0]!;
        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan((int)(8 + n + begin + 8)), bad);
        var e = Assert.Throws<BnnDataException>(() => ModelFile.Read(bytes, "m.bnn"));
        Assert.Contains("mean[2]", e.Message);
    }

    [Fact]
    public void Load_SetPaddingBit_IsRejected()
    {
        var model = RandomModels.Create([new ConvSpec(2, 3, 1, 0), new OutputSpec(3)], new Shape(1, 3, 3), 1);
        var bytes = ModelFile.Write(model);
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!;
        long begin = (long)header["layers.0.weight"]!["data_offsets"]![0]!;
        bytes[8 + n + begin + 1] |= 0x80; // 9 taps fill bits 0..8; bit 15 is padding
        var e = Assert.Throws<BnnDataException>(() => ModelFile.Read(bytes, "m.bnn"));
        Assert.Contains("padding bit", e.Message);
    }

    private static byte[] Rewrite(byte[] file, Action<JsonNode> edit)
    {
        long n = BinaryPrimitives.ReadInt64LittleEndian(file);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(file, 8, (int)n))!;
        edit(header);
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var result = new byte[8 + json.Length + (file.Length - 8 - n)];
        BinaryPrimitives.WriteInt64LittleEndian(result, json.Length);
        json.CopyTo(result, 8);
        file.AsSpan((int)(8 + n)).CopyTo(result.AsSpan(8 + json.Length));
        return result;
    }
}
