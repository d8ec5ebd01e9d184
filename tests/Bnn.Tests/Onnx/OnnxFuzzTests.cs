using Bnn.Data;
using Bnn.Engine;
using Bnn.Model;
using Bnn.Onnx;
using Xunit.Abstractions;

namespace Bnn.Tests.Onnx;

/// <summary>
/// Seeded fuzzing of the importer: mutated and truncated variants of valid models must import or fail with our clear
/// error, never with another exception or a hang. CI runs a short pass; BNN_FUZZ_ITERATIONS sets a longer one
/// (docs/onnx-profile.md records a 100,000-variant run).
/// </summary>
public sealed class OnnxFuzzTests(ITestOutputHelper output)
{
    private static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("BNN_FUZZ_ITERATIONS"), out int n) ? n : 20000;

    internal static IReadOnlyList<byte[]> Seeds() =>
    [
        OnnxExporter.ToBytes(RandomModels.Create(
            [new ConvSpec(4, 3, 1, 1), new PoolSpec(2), new ConvSpec(5, 3, 1, 1), new DenseSpec(6), new OutputSpec(3)], new Shape(2, 6, 6), seed: 1, binaryPadValue: -1)),
        OnnxExporter.ToBytes(RandomModels.Create(
            [new ConvSpec(3, 3, 1, 0), new ConvSpec(4, 3, 2, 1), new OutputSpec(2)], new Shape(1, 7, 7), seed: 2, binaryPadValue: 0)),
    ];

    /// <summary>One seeded byte-level variant: byte flips, truncation, insertion, deletion or a spliced copy of another region.</summary>
    internal static byte[] Mutate(byte[] seed, Random rng)
    {
        var bytes = new List<byte>(seed);
        int edits = 1 + rng.Next(4);
        for (int e = 0; e < edits && bytes.Count > 0; e++)
        {
            int at = rng.Next(bytes.Count);
            switch (rng.Next(5))
            {
                case 0:
                    bytes[at] = (byte)rng.Next(256);
                    break;
                case 1:
                    bytes.RemoveRange(at, bytes.Count - at);
                    break;
                case 2:
                    bytes.InsertRange(at, Enumerable.Range(0, 1 + rng.Next(8)).Select(_ => (byte)rng.Next(256)));
                    break;
                case 3:
                    bytes.RemoveRange(at, Math.Min(bytes.Count - at, 1 + rng.Next(16)));
                    break;
                default:
                    int from = rng.Next(bytes.Count), length = Math.Min(bytes.Count - from, 1 + rng.Next(32));
                    bytes.InsertRange(at, bytes.GetRange(from, length));
                    break;
            }
        }
        return [.. bytes];
    }

    private static readonly string[] OpTypes =
        ["Conv", "Sign", "Add", "Mul", "Sub", "Div", "MaxPool", "Gemm", "MatMul", "Flatten", "Reshape", "Pad", "BatchNormalization",
         "Where", "Greater", "Shape", "Gather", "Concat", "Identity", "Clip", "Floor", "Cast", "Relu", "Softmax"];

    /// <summary>One seeded structural variant: nodes removed, retyped, rewired or duplicated; attributes and dims changed.</summary>
    internal static byte[] MutateStructure(byte[] seed, Random rng)
    {
        var model = Bnn.Onnx.Proto.ModelProto.Parser.ParseFrom(seed);
        var g = model.Graph;
        int edits = 1 + rng.Next(3);
        for (int e = 0; e < edits && g.Node.Count > 0; e++)
        {
            var node = g.Node[rng.Next(g.Node.Count)];
            switch (rng.Next(7))
            {
                case 0:
                    g.Node.Remove(node);
                    break;
                case 1:
                    node.OpType = OpTypes[rng.Next(OpTypes.Length)];
                    break;
                case 2 when node.Input.Count > 0:
                    var names = g.Node.SelectMany(n => n.Output).Concat(g.Initializer.Select(t => t.Name)).ToList();
                    node.Input[rng.Next(node.Input.Count)] = names[rng.Next(names.Count)];
                    break;
                case 3 when node.Attribute.Count > 0:
                    var a = node.Attribute[rng.Next(node.Attribute.Count)];
                    a.I = rng.Next(-3, 70);
                    for (int i = 0; i < a.Ints.Count; i++)
                    {
                        a.Ints[i] = rng.Next(4) == 0 ? rng.Next(-3, 70) : a.Ints[i];
                    }
                    break;
                case 4 when g.Initializer.Count > 0:
                    var t = g.Initializer[rng.Next(g.Initializer.Count)];
                    if (t.Dims.Count > 0)
                    {
                        t.Dims[rng.Next(t.Dims.Count)] = rng.Next(4) == 0 ? long.MaxValue / (1 + rng.Next(3)) : rng.Next(-2, 20);
                    }
                    break;
                case 5:
                    g.Node.Insert(rng.Next(g.Node.Count + 1), node.Clone());
                    break;
                default:
                    if (g.Input.Count > 0 && g.Input[0].Type?.TensorType?.Shape is { } shape && shape.Dim.Count > 0)
                    {
                        shape.Dim[rng.Next(shape.Dim.Count)].DimValue = rng.Next(-1, 40);
                    }
                    break;
            }
        }
        return Google.Protobuf.MessageExtensions.ToByteArray(model);
    }

    [Fact]
    public void Import_MutatedModels_FailOnlyWithClearErrors()
    {
        var seeds = Seeds();
        var rng = new Random(20261127);
        int imported = 0, rejected = 0;
        for (int i = 0; i < Iterations; i++)
        {
            var seed = seeds[i % seeds.Count];
            var variant = i % 2 == 0 ? Mutate(seed, rng) : MutateStructure(seed, rng);
            try
            {
                var model = OnnxImporter.Import(variant, "fuzz.onnx");
                // Whatever imports must also run, identically on the reference and the packed engine.
                var image = TestData.RandomImages(1, i, model.Input.Channels, model.Input.Height, model.Input.Width, model.Classes);
                Assert.Equal(new Bnn.Engine.Reference.ReferenceEngine(model).Run(image).Scores, new Bnn.Engine.PackedEngine(model).Run(image).Scores);
                imported++;
            }
            catch (BnnDataException e)
            {
                Assert.StartsWith("fuzz.onnx: ", e.Message);
                rejected++;
            }
            catch (Exception e)
            {
                Assert.Fail($"variant {i} threw {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
        }
        output.WriteLine($"{Iterations} variants: {imported} imported, {rejected} rejected with a clear error");
        Assert.Equal(Iterations, imported + rejected);
        Assert.True(rejected > 0 && imported > 0, $"{imported} imported, {rejected} rejected: the mutations should produce both");
    }
}
