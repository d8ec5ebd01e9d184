using System.CommandLine;
using Bnn.Data;
using Bnn.Model;

namespace Bnn.Cli;

/// <summary>Options several commands share, and how they are turned into objects.</summary>
internal static class CommonOptions
{
    public static Option<string> Model() => new("--model") { Description = "model file (.bnn, or .onnx imported on the fly)", Required = true };

    public static Option<string> Data(bool required = true) => new("--data") { Description = "directory with the dataset files", Required = required };

    public static Option<string> Dataset() => new Option<string>("--dataset") { Description = "dataset", DefaultValueFactory = _ => "cifar10" }
        .AcceptOnlyFromAmong([.. Datasets.Names]);

    public static Option<string> Split() => new Option<string>("--split") { Description = "which split", DefaultValueFactory = _ => "test" }
        .AcceptOnlyFromAmong("test", "train");

    public static Option<string?> File() => new("--file") { Description = "a single record file inside --data, e.g. lossless_test_0-999.bin.gz" };

    public static Option<int?> Limit() => new("--limit") { Description = "use only the first N images" };

    public static Option<int> Threads() => new("--threads") { Description = "worker threads", DefaultValueFactory = _ => Environment.ProcessorCount };

    public static Option<string?> Json() => new("--json") { Description = "also write the results as JSON to this file" };

    /// <summary>Loads our model file, or imports an ONNX file (by its .onnx extension) in memory.</summary>
    public static BnnModel LoadModel(string path) => IsOnnx(path) ? Onnx.OnnxImporter.Import(path) : ModelFile.Load(path);

    public static bool IsOnnx(string path) => path.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase);

    /// <summary>The options that pick an evaluation set: --data, --dataset, --split, --file, --limit.</summary>
    public sealed class ImageSelection
    {
        public Option<string> Data { get; } = CommonOptions.Data();

        public Option<string> Dataset { get; } = CommonOptions.Dataset();

        public Option<string> Split { get; } = CommonOptions.Split();

        public Option<string?> File { get; } = CommonOptions.File();

        public Option<int?> Limit { get; } = CommonOptions.Limit();

        /// <summary>Adds the options to <paramref name="command"/>, in the order above.</summary>
        public void AddTo(Command command)
        {
            foreach (Option option in new Option[] { Data, Dataset, Split, File, Limit })
            {
                command.Add(option);
            }
        }

        /// <summary>The images the parsed options select.</summary>
        public ImageSet Load(ParseResult parse) =>
            LoadImages(parse.GetValue(Dataset)!, parse.GetValue(Data)!, parse.GetValue(Split)!, parse.GetValue(File), parse.GetValue(Limit));
    }

    public static ImageSet LoadImages(string dataset, string dir, string split, string? file, int? limit)
    {
        if (limit is <= 0)
        {
            throw new UsageException("--limit must be positive");
        }
        var set = Datasets.Load(dataset, dir, split, file);
        return limit is int n ? set.Take(n) : set;
    }

    public static void CheckThreads(int threads)
    {
        if (threads <= 0)
        {
            throw new UsageException("--threads must be positive");
        }
    }

    /// <summary>Writes a JSON document atomically.</summary>
    public static void WriteJson(string path, Action<System.Text.Json.Utf8JsonWriter> write)
    {
        Bnn.IO.AtomicFile.Write(path, stream =>
        {
            using var w = new System.Text.Json.Utf8JsonWriter(stream, new System.Text.Json.JsonWriterOptions { Indented = true });
            write(w);
        });
    }
}
