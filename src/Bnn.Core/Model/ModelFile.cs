using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Bnn.Data;
using Bnn.IO;

namespace Bnn.Model;

/// <summary>
/// Reads and writes the single-file model format described in docs/model-format.md: a safetensors file whose
/// <c>__metadata__</c> carries <c>format = "bnn-model"</c>, <c>format_version</c> and the architecture as JSON, and
/// whose tensors hold bit-packed ±1 weights (U8) and batch-norm parameters (F32), all little-endian.
/// </summary>
public static class ModelFile
{
    /// <summary>The value of <c>__metadata__.format</c>.</summary>
    public const string FormatName = "bnn-model";

    /// <summary>The format version this build writes and reads.</summary>
    public const int FormatVersion = 1;

    /// <summary>The conventional file extension.</summary>
    public const string Extension = ".bnn";

    /// <summary>Loads and validates a model file; every defect is a <see cref="BnnDataException"/> naming the file.</summary>
    public static BnnModel Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new BnnDataException($"{path}: model file not found");
        }
        return Read(File.ReadAllBytes(path), path);
    }

    /// <summary>Parses a model from memory; <paramref name="source"/> names it in errors.</summary>
    public static BnnModel Read(byte[] bytes, string source)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        var file = SafeTensors.Parse(bytes, source);
        if (!file.Metadata.TryGetValue("format", out var format) || format != FormatName)
        {
            throw new BnnDataException($"{source}: not a bnn model file (safetensors metadata lacks format = \"{FormatName}\")");
        }
        if (!file.Metadata.TryGetValue("format_version", out var version) || version != FormatVersion.ToString(CultureInfo.InvariantCulture))
        {
            throw new BnnDataException($"{source}: unsupported model format version '{version}' (this build reads {FormatVersion})");
        }
        if (!file.Metadata.TryGetValue("architecture", out var archJson))
        {
            throw new BnnDataException($"{source}: metadata has no architecture");
        }
        try
        {
            using var doc = JsonDocument.Parse(archJson);
            return ArchitectureJson.Build(doc.RootElement, file, source);
        }
        catch (JsonException e)
        {
            throw new BnnDataException($"{source}: architecture is not valid JSON ({e.Message})", e);
        }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException or OverflowException)
        {
            throw new BnnDataException($"{source}: malformed architecture ({e.Message})", e);
        }
    }

    /// <summary>Writes <paramref name="model"/> atomically: a temporary file renamed over the target.</summary>
    public static void Save(BnnModel model, string path)
    {
        ArgumentNullException.ThrowIfNull(model);
        AtomicFile.WriteAllBytes(path, Write(model));
    }

    /// <summary>Serializes a model to bytes.</summary>
    public static byte[] Write(BnnModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var tensors = new List<SafeTensors.Entry>();
        var arch = ArchitectureJson.Write(model, tensors);
        var metadata = new Dictionary<string, string>
        {
            ["format"] = FormatName,
            ["format_version"] = FormatVersion.ToString(CultureInfo.InvariantCulture),
            ["architecture"] = arch,
        };
        return SafeTensors.Write(metadata, tensors);
    }
}

/// <summary>
/// Minimal safetensors container: 8-byte little-endian header length, a JSON header mapping tensor names to
/// dtype, shape and [begin, end) byte offsets into the data that follows, and an optional <c>__metadata__</c>
/// object of string values.
/// </summary>
internal static class SafeTensors
{
    private const long MaxHeaderBytes = 64L << 20;

    internal sealed record Entry(string Name, string DType, long[] Shape, byte[] Data);

    internal sealed class File(Dictionary<string, string> metadata, Dictionary<string, Entry> tensors, string source)
    {
        public Dictionary<string, string> Metadata { get; } = metadata;

        public Dictionary<string, Entry> Tensors { get; } = tensors;

        public Entry Get(string name, string dtype, params long[] shape)
        {
            if (!Tensors.TryGetValue(name, out var e))
            {
                throw new BnnDataException($"{source}: missing tensor '{name}'");
            }
            if (e.DType != dtype || !e.Shape.AsSpan().SequenceEqual(shape))
            {
                throw new BnnDataException(
                    $"{source}: tensor '{name}' is {e.DType}[{string.Join(",", e.Shape)}], expected {dtype}[{string.Join(",", shape)}]");
            }
            return e;
        }
    }

    public static File Parse(byte[] bytes, string source)
    {
        if (bytes.Length < 8)
        {
            throw new BnnDataException($"{source}: truncated file ({bytes.Length} bytes; a safetensors header needs 8)");
        }
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (headerLength > (ulong)MaxHeaderBytes || headerLength > (ulong)(bytes.Length - 8))
        {
            throw new BnnDataException($"{source}: header length {headerLength} exceeds the file ({bytes.Length} bytes): truncated or not a safetensors file");
        }
        int dataStart = 8 + (int)headerLength;
        long dataLength = bytes.Length - dataStart;
        var metadata = new Dictionary<string, string>();
        var tensors = new Dictionary<string, Entry>();
        try
        {
            using var doc = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new BnnDataException($"{source}: safetensors header is not a JSON object");
            }
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        metadata[m.Name] = m.Value.GetString() ?? "";
                    }
                    continue;
                }
                var dtype = prop.Value.GetProperty("dtype").GetString() ?? "";
                var shape = prop.Value.GetProperty("shape").EnumerateArray().Select(v => v.GetInt64()).ToArray();
                var offsets = prop.Value.GetProperty("data_offsets").EnumerateArray().Select(v => v.GetInt64()).ToArray();
                int elem = dtype switch
                {
                    "U8" => 1,
                    "F32" or "I32" => 4,
                    _ => throw new BnnDataException($"{source}: tensor '{prop.Name}' has unsupported dtype '{dtype}'"),
                };
                if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || shape.Any(d => d < 0))
                {
                    throw new BnnDataException($"{source}: tensor '{prop.Name}' has invalid shape or offsets");
                }
                if (offsets[1] > dataLength)
                {
                    throw new BnnDataException(
                        $"{source}: truncated: tensor '{prop.Name}' ends at data offset {offsets[1]} (file offset {dataStart + offsets[1]}) but the file has {dataLength} data bytes");
                }
                long count = 1;
                foreach (var d in shape)
                {
                    count = checked(count * d);
                }
                if (checked(count * elem) != offsets[1] - offsets[0])
                {
                    throw new BnnDataException($"{source}: tensor '{prop.Name}' holds {offsets[1] - offsets[0]} bytes, but {dtype}[{string.Join(",", shape)}] needs {count * elem}");
                }
                tensors[prop.Name] = new Entry(prop.Name, dtype, shape, bytes.AsSpan(dataStart + (int)offsets[0], (int)(offsets[1] - offsets[0])).ToArray());
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException or OverflowException)
        {
            throw new BnnDataException($"{source}: corrupt safetensors header ({e.Message})", e);
        }
        return new File(metadata, tensors, source);
    }

    public static byte[] Write(IReadOnlyDictionary<string, string> metadata, IReadOnlyList<Entry> tensors)
    {
        using var headerStream = new MemoryStream();
        using (var w = new Utf8JsonWriter(headerStream))
        {
            w.WriteStartObject();
            w.WriteStartObject("__metadata__");
            foreach (var (k, v) in metadata)
            {
                w.WriteString(k, v);
            }
            w.WriteEndObject();
            long offset = 0;
            foreach (var t in tensors)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", t.DType);
                w.WriteStartArray("shape");
                foreach (var d in t.Shape)
                {
                    w.WriteNumberValue(d);
                }
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + t.Data.Length);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += t.Data.Length;
            }
            w.WriteEndObject();
        }
        // Pad the header with spaces to 8 bytes so tensor data is aligned, as the safetensors spec allows.
        var header = headerStream.ToArray().AsEnumerable().ToList();
        while (header.Count % 8 != 0)
        {
            header.Add((byte)' ');
        }
        using var output = new MemoryStream();
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Count);
        output.Write(len);
        output.Write(header.ToArray());
        foreach (var t in tensors)
        {
            output.Write(t.Data);
        }
        return output.ToArray();
    }

    public static Entry F32(string name, float[] values)
    {
        var data = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(i * 4), values[i]);
        }
        return new Entry(name, "F32", [values.Length], data);
    }

    public static Entry I32(string name, int[] values, params long[] shape)
    {
        var data = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(i * 4), values[i]);
        }
        return new Entry(name, "I32", shape, data);
    }

    public static int[] ToI32(Entry e)
    {
        var values = new int[e.Data.Length / 4];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BinaryPrimitives.ReadInt32LittleEndian(e.Data.AsSpan(i * 4));
        }
        return values;
    }

    public static float[] ToF32(Entry e)
    {
        var values = new float[e.Data.Length / 4];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BinaryPrimitives.ReadSingleLittleEndian(e.Data.AsSpan(i * 4));
        }
        return values;
    }

    /// <summary>
    /// Packs ±1 values row by row, LSB first, bit 1 = −1 (the engine's convention, see BitConvention), each row
    /// padded with zero bits to a whole byte.
    /// </summary>
    public static Entry PackSigns(string name, sbyte[] values, int rows)
    {
        int cols = values.Length / rows;
        int rowBytes = (cols + 7) / 8;
        var data = new byte[rows * rowBytes];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                if (values[(r * cols) + c] < 0)
                {
                    data[(r * rowBytes) + (c >> 3)] |= (byte)(1 << (c & 7));
                }
            }
        }
        return new Entry(name, "U8", [rows, rowBytes], data);
    }

    public static sbyte[] UnpackSigns(Entry e, int rows, int cols, string source)
    {
        int rowBytes = (cols + 7) / 8;
        var values = new sbyte[rows * cols];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                values[(r * cols) + c] = (sbyte)(((e.Data[(r * rowBytes) + (c >> 3)] >> (c & 7)) & 1) == 1 ? -1 : 1);
            }
            for (int c = cols; c < rowBytes * 8; c++)
            {
                if (((e.Data[(r * rowBytes) + (c >> 3)] >> (c & 7)) & 1) != 0)
                {
                    throw new BnnDataException($"{source}: tensor '{e.Name}' row {r} has a set padding bit {c}");
                }
            }
        }
        return values;
    }
}
