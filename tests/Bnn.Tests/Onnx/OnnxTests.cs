using Bnn.Data;
using Bnn.Engine;
using Bnn.Engine.Reference;
using Bnn.Model;
using Bnn.Onnx;
using Bnn.Tests.Cli;
using static Bnn.Tests.Onnx.OnnxGraph;

namespace Bnn.Tests.Onnx;

public sealed class OnnxTests
{
    /// <summary>Our fast engine on the model and ONNX Runtime on the ONNX bytes give the same scores and predictions.</summary>
    private static void AssertRuntimeAgrees(BnnModel model, byte[] onnx, ImageSet images, bool integerScores = true)
    {
        var (scores, predictions) = new PackedEngine(model).Run(images, threads: 2);
        using var runtime = new OnnxRuntimeEngine(model, onnx);
        var floats = runtime.ScoreFloat(images, 0, images.Count, threads: 2);
        Assert.Equal(predictions, OnnxRuntimeEngine.Predictions(floats, model.Classes));
        Assert.True(predictions.Distinct().Count() > 1, "a model predicting one class tests too little");
        if (integerScores)
        {
            Assert.Equal(scores, floats.Select(v => (int)v).ToArray());
            Assert.All(floats, v => Assert.Equal(MathF.Round(v), v));
        }
    }

    public static TheoryData<string, int> ExportCases() => new()
    {
        { "cnv", 1 },          // valid convs, pools, dense layers
        { "vgg+1", 2 },        // convs padded with +1 (an explicit Pad node)
        { "vgg-1", 3 },        // padded with -1
        { "zero-pad", 4 },     // zero padding on binary layers (Conv pads)
        { "levels", 5 },       // custom per-channel pixel levels
    };

    private static BnnModel ExportModel(string kind, int seed)
    {
        var input = new Shape(3, 16, 16);
        var vgg = new LayerSpec[] { new ConvSpec(16, 3, 1, 1), new ConvSpec(33, 3, 1, 1), new PoolSpec(2), new ConvSpec(65, 3, 2, 1), new DenseSpec(40), new OutputSpec(10) };
        var model = kind switch
        {
            "cnv" => RandomModels.Create(Architectures.Build("cnv", 0.125), new Shape(3, 32, 32), seed),
            "vgg+1" => RandomModels.Create(vgg, input, seed, binaryPadValue: 1),
            "vgg-1" => RandomModels.Create(vgg, input, seed, binaryPadValue: -1),
            _ => RandomModels.Create(vgg, input, seed, binaryPadValue: 0),
        };
        if (kind == "levels")
        {
            var first = (ConvLayer)model.Layers[0];
            var levels = Enumerable.Range(0, 3 * 256).Select(i => ((i / 256) + 1) * ((i % 256) - 100)).ToArray();
            var layer = new ConvLayer(first.OutChannels, first.InChannels, first.KernelH, first.KernelW, first.Stride, first.Padding, 0, true, first.Weights, first.Norm, levels);
            model = model.WithLayers([layer, .. model.Layers.Skip(1)]);
        }
        return model;
    }

    [Theory]
    [MemberData(nameof(ExportCases))]
    public void Export_RunsInOnnxRuntime_WithOurExactScores(string kind, int seed)
    {
        // Given a random model of each shape our engine supports
        var model = ExportModel(kind, seed);
        var images = TestData.RandomImages(300, seed, height: model.Input.Height, width: model.Input.Width);

        // When it is exported and run in ONNX Runtime, then every score equals ours
        AssertRuntimeAgrees(model, OnnxExporter.ToBytes(model), images);
    }

    [Theory]
    [MemberData(nameof(ExportCases))]
    public void ImportOfExport_GivesTheSameWeightsThresholdsAndScores(string kind, int seed)
    {
        var model = ExportModel(kind, seed);
        var imported = OnnxImporter.Import(OnnxExporter.ToBytes(model), "roundtrip.onnx");

        Assert.Equal(model.Layers.Select(l => l.Kind), imported.Layers.Select(l => l.Kind));
        for (int i = 0; i < model.Layers.Count; i++)
        {
            switch ((model.Layers[i], imported.Layers[i]))
            {
                case (ConvLayer a, ConvLayer b):
                    Assert.Equal(a.Weights, b.Weights);
                    Assert.Equal((a.Padding, a.PadValue, a.Stride), (b.Padding, b.PadValue, b.Stride));
                    Assert.Equal(a.PixelLevels, b.PixelLevels);
                    break;
                case (DenseLayer a, DenseLayer b):
                    Assert.Equal(a.Weights, b.Weights);
                    break;
                case (OutputLayer a, OutputLayer b):
                    Assert.Equal(a.Weights, b.Weights);
                    break;
            }
        }
        var images = TestData.RandomImages(50, seed, height: model.Input.Height, width: model.Input.Width);
        Assert.Equal(new ReferenceEngine(model).Run(images).Scores, new ReferenceEngine(imported).Run(images).Scores);
    }

    /// <summary>
    /// A hand-written graph in the style of a PyTorch export: preprocessing, Conv with bias → BatchNormalization → Sign
    /// → MaxPool → zero-padded Conv → BatchNormalization → Sign → MaxPool → Shape/Gather/Unsqueeze/Concat → Reshape →
    /// Gemm with bias → BatchNormalization → Sign → Gemm (transB = 0).
    /// </summary>
    private static byte[] PyTorchStyle(int seed)
    {
        var rng = new Random(seed);
        var g = new OnnxGraph(3, 16, 16);
        g.Apply("Sub", [128f]);
        g.Apply("Div", [128f]);
        g.Node("Conv", [g.Last, g.Const(Signs(rng, 16 * 3 * 9), 16, 3, 3, 3), g.Const(Uniform(rng, 16, -1, 1), 16)],
            IntList("kernel_shape", 3, 3), IntList("pads", 1, 1, 1, 1), IntList("strides", 1, 1));
        Norm(g, rng, 16, spread: 3);
        g.Node("Sign", [g.Last]);
        g.Node("MaxPool", [g.Last], IntList("kernel_shape", 2, 2), IntList("strides", 2, 2));
        g.Node("Conv", [g.Last, g.Const(Signs(rng, 32 * 16 * 9), 32, 16, 3, 3)], IntList("kernel_shape", 3, 3), IntList("pads", 1, 1, 1, 1));
        Norm(g, rng, 32, spread: 8);
        g.Node("Sign", [g.Last]);
        g.Node("MaxPool", [g.Last], IntList("kernel_shape", 2, 2), IntList("strides", 2, 2));
        string pooled = g.Last;
        string shape = g.Node("Shape", [pooled]);
        string batch = g.Node("Gather", [shape, g.Ints([0])], Int("axis", 0));
        string target = g.Node("Concat", [batch, g.Ints([-1])], Int("axis", 0));
        g.Node("Reshape", [pooled, target]);
        g.Node("Gemm", [g.Last, g.Const(Signs(rng, 64 * 512), 64, 512), g.Const(Uniform(rng, 64, -3, 3), 64)], Int("transB", 1));
        Norm(g, rng, 64, spread: 10);
        g.Node("Sign", [g.Last]);
        g.Node("Gemm", [g.Last, g.Const(Signs(rng, 64 * 10), 64, 10)]);
        return g.Build(10);
    }

    private static void Norm(OnnxGraph g, Random rng, int n, double spread)
    {
        var scale = Enumerable.Range(0, n).Select(_ => (float)((rng.Next(4) == 0 ? -1 : 1) * (0.5 + rng.NextDouble()))).ToArray();
        g.Node("BatchNormalization", [g.Last, g.Const(scale, n), g.Const(Uniform(rng, n, -0.5, 0.5), n),
            g.Const(Uniform(rng, n, -spread, spread), n), g.Const(Uniform(rng, n, spread, 4 * spread * spread), n)], Float("epsilon", 1e-5f));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Import_PyTorchStyleGraph_AgreesWithOnnxRuntime(int seed)
    {
        var onnx = PyTorchStyle(seed);
        var model = OnnxImporter.Import(onnx, "pytorch-style.onnx");

        Assert.Equal(["conv", "maxpool", "conv", "maxpool", "dense", "output"], model.Layers.Select(l => l.Kind));
        Assert.Equal(0, ((ConvLayer)model.Layers[2]).PadValue);
        AssertRuntimeAgrees(model, onnx, TestData.RandomImages(300, seed, height: 16, width: 16));
    }

    [Fact]
    public void Import_PreprocessingOps_AreFoldedIntoExactPixelLevels()
    {
        var rng = new Random(5);
        var g = new OnnxGraph(3, 12, 12);
        g.Node("Cast", [g.Last], Int("to", 1));
        g.Apply("Mul", [0.5f, 0.25f, 1f], 1, 3, 1, 1);
        g.Node("Floor", [g.Last]);
        g.Apply("Sub", [40f]);
        g.Node("Clip", [g.Last, g.Const([-30f]), g.Const([50f])]);
        g.Node("Relu", [g.Last]);
        g.Apply("Add", [-7.5f]);
        g.Node("Neg", [g.Last]);
        g.Node("Round", [g.Last]);
        g.Node("Conv", [g.Last, g.Const(Signs(rng, 8 * 27), 8, 3, 3, 3)], IntList("kernel_shape", 3, 3));
        Norm(g, rng, 8, spread: 30);
        g.Node("Sign", [g.Last]);
        g.Node("Flatten", [g.Last], Int("axis", 1));
        g.Node("Gemm", [g.Last, g.Const(Signs(rng, 10 * 800), 10, 800)], Int("transB", 1));
        var onnx = g.Build(10);

        var model = OnnxImporter.Import(onnx, "pre.onnx");

        Assert.NotNull(((ConvLayer)model.Layers[0]).PixelLevels);
        AssertRuntimeAgrees(model, onnx, TestData.RandomImages(300, 6, height: 12, width: 12));
    }

    /// <summary>Conv → (per-channel Mul, Add) → GreaterOrEqual / Greater → Where(±1) spellings of the sign.</summary>
    [Theory]
    [InlineData("GreaterOrEqual", 1f, -1f)]
    [InlineData("Greater", 1f, -1f)]
    [InlineData("GreaterOrEqual", -1f, 1f)]
    public void Import_WhereSpellingsOfTheSign_AgreeWithOnnxRuntime(string comparison, float whenTrue, float whenFalse)
    {
        var rng = new Random(9);
        var g = new OnnxGraph(3, 10, 10);
        g.Node("Conv", [g.Last, g.Const(Signs(rng, 12 * 27), 12, 3, 3, 3)], IntList("kernel_shape", 3, 3));
        g.Apply("Mul", Uniform(rng, 12, -2, 2), 1, 12, 1, 1);
        // Integer-valued thresholds so that GreaterOrEqual and Greater really differ on reachable accumulators.
        string acc = g.Apply("Add", Enumerable.Range(0, 12).Select(_ => (float)rng.Next(-20, 20)).ToArray(), 1, 12, 1, 1);
        g.Node(comparison, [acc, g.Const(Uniform(rng, 12, -300, 300), 1, 12, 1, 1)]);
        g.Node("Where", [g.Last, g.Const([whenTrue]), g.Const([whenFalse])]);
        g.Node("Flatten", [g.Last], Int("axis", 1));
        g.Node("MatMul", [g.Last, g.Const(Signs(rng, 768 * 10), 768, 10)]);
        var onnx = g.Build(10);

        var model = OnnxImporter.Import(onnx, "where.onnx");

        AssertRuntimeAgrees(model, onnx, TestData.RandomImages(300, 10, height: 10, width: 10));
    }

    [Fact]
    public void Import_SignTie_IsRejectedWithTheAccumulatorValue()
    {
        // acc − 3 is exactly 0 when the binary accumulator is 3, where ONNX Sign gives 0.
        var rng = new Random(1);
        var g = new OnnxGraph(3, 8, 8);
        g.Node("Conv", [g.Last, g.Const(Signs(rng, 4 * 27), 4, 3, 3, 3)], IntList("kernel_shape", 3, 3));
        g.Apply("Add", [0.5f]);
        g.Node("Sign", [g.Last]);
        g.Node("Conv", [g.Last, g.Const(Signs(rng, 4 * 36), 4, 4, 3, 3)], IntList("kernel_shape", 3, 3));
        g.Apply("Sub", [3f]);
        g.Node("Sign", [g.Last]);
        g.Node("Flatten", [g.Last], Int("axis", 1));
        g.Node("Gemm", [g.Last, g.Const(Signs(rng, 10 * 64), 10, 64)], Int("transB", 1));

        var e = Assert.Throws<BnnDataException>(() => OnnxImporter.Import(g.Build(10), "tie.onnx"));

        Assert.Contains("tie.onnx: node 'Sign_", e.Message);
        Assert.Contains("accumulator is 3", e.Message);
    }

    public static TheoryData<string, string> Rejections() => new()
    {
        { "weights", "are not all ±1" },
        { "softmax", "outside the BNN profile" },
        { "divide-255", "not all multiples of one power of two" },
        { "per-class-bias", "changes the argmax" },
        { "dilation", "dilation 1" },
    };

    [Theory]
    [MemberData(nameof(Rejections))]
    public void Import_OutsideTheProfile_FailsWithAClearMessageNamingTheNode(string kind, string reason)
    {
        var rng = new Random(2);
        var g = new OnnxGraph(3, 8, 8);
        if (kind == "divide-255")
        {
            g.Apply("Div", [255f]);
        }
        var w = Signs(rng, 4 * 27);
        if (kind == "weights")
        {
            w[5] = 0.5f;
        }
        g.Node("Conv", [g.Last, g.Const(w, 4, 3, 3, 3)], IntList("kernel_shape", 3, 3), IntList("dilations", 1, kind == "dilation" ? 2 : 1));
        g.Apply("Add", [0.5f]);
        g.Node("Sign", [g.Last]);
        g.Node("Flatten", [g.Last], Int("axis", 1));
        g.Node("Gemm", [g.Last, g.Const(Signs(rng, 10 * 144), 10, 144)], Int("transB", 1));
        if (kind == "softmax")
        {
            g.Node("Softmax", [g.Last]);
        }
        if (kind == "per-class-bias")
        {
            g.Apply("Add", Uniform(rng, 10, -1, 1), 10);
        }

        var e = Assert.Throws<BnnDataException>(() => OnnxImporter.Import(g.Build(10), "bad.onnx"));

        Assert.Contains(reason, e.Message);
        Assert.StartsWith("bad.onnx: ", e.Message);
        Assert.Contains("node '", e.Message);
    }

    [Fact]
    public void Import_DynamicChannelDimension_IsRejected()
    {
        var g = new OnnxGraph(3, 8, 8);
        var proto = Bnn.Onnx.Proto.ModelProto.Parser.ParseFrom(g.Build(10));
        proto.Graph.Input[0].Type.TensorType.Shape.Dim[2].DimParam = "H";
        var e = Assert.Throws<BnnDataException>(() => OnnxImporter.Import(Google.Protobuf.MessageExtensions.ToByteArray(proto), "dyn.onnx"));
        Assert.Contains("cannot be dynamic", e.Message);
    }

    [Fact]
    public void CliImport_OfABadModel_WritesNothing()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("bad.onnx"), [1, 2, 3, 4, 5]);

        var (code, _, err) = CliRunner.Run("import", dir.File("bad.onnx"), "--out", dir.File("m.bnn"));

        Assert.Equal(2, code);
        Assert.Contains("bad.onnx", err);
        Assert.False(File.Exists(dir.File("m.bnn")));
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));
    }

    [Fact]
    public void CliExportCheckImport_OnGeneratedCifar_AgreeEverywhere()
    {
        // Given a model and a small CIFAR-10 directory
        using var dir = new TempDirectory();
        TestData.WriteCifarDirectory(dir, perBatch: 10, seed: 4);
        var model = RandomModels.Create(Architectures.Build("cnv", 0.125), new Shape(3, 32, 32), seed: 5);
        ModelFile.Save(model, dir.File("m.bnn"));

        // When it is exported, checked against ONNX Runtime and imported back
        var export = CliRunner.Run("export", "--model", dir.File("m.bnn"), "--out", dir.File("m.onnx"));
        var check = CliRunner.Run("check", "--model", dir.File("m.bnn"), "--onnx", dir.File("m.onnx"), "--data", dir.Path, "--json", dir.File("c.json"));
        var import = CliRunner.Run("import", dir.File("m.onnx"), "--out", dir.File("back.bnn"));
        var evalOnnx = CliRunner.Run("eval", "--model", dir.File("m.onnx"), "--data", dir.Path, "--engine", "onnxruntime", "--json", dir.File("e.json"));

        // Then every step succeeds and agrees
        Assert.True(export.Code == 0, export.Err);
        Assert.True(check.Code == 0, check.Err);
        Assert.Contains("10/10 predictions agree", check.Out);
        Assert.Contains("scores: identical", check.Out);
        Assert.True(import.Code == 0, import.Err);
        Assert.True(evalOnnx.Code == 0, evalOnnx.Err);
        var images = TestData.RandomImages(10, 4);
        var expected = new PackedEngine(model).Run(images).Predictions;
        Assert.Equal(expected, new PackedEngine(ModelFile.Load(dir.File("back.bnn"))).Run(images).Predictions);
        using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(dir.File("e.json")));
        Assert.Equal(expected, json.RootElement.GetProperty("predictions").EnumerateArray().Select(p => p.GetInt32()).ToArray());
    }
}
