using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace Bnn.Data;

public static partial class Svhn
{
    /// <summary>
    /// Loads an SVHN cropped-digits file (format 2): a MATLAB v5 .mat holding <c>X</c>, uint8 32x32x3xN, and
    /// <c>y</c>, N labels 1-10 where 10 means digit 0. Elements may be zlib-compressed (miCOMPRESSED).
    /// </summary>
    public static ImageSet LoadFile(string path)
    {
        if (!File.Exists(path))
        {
            throw new BnnDataException($"{path}: file not found");
        }
        var vars = MatV5.Read(File.ReadAllBytes(path), path);
        if (!vars.TryGetValue("X", out var x))
        {
            throw new BnnDataException($"{path}: no variable 'X' (found: {string.Join(", ", vars.Keys)}); not an SVHN format-2 file");
        }
        if (!vars.TryGetValue("y", out var y))
        {
            throw new BnnDataException($"{path}: no variable 'y' (found: {string.Join(", ", vars.Keys)}); not an SVHN format-2 file");
        }
        if (x.ClassName != "uint8")
        {
            throw new BnnDataException($"{path}: variable 'X' has unsupported class {x.ClassName} (expected uint8)");
        }
        if (x.Dims.Length != 4 || x.Dims[2] != 3 || x.Dims[0] <= 0 || x.Dims[1] <= 0)
        {
            throw new BnnDataException($"{path}: variable 'X' has dimensions [{string.Join("x", x.Dims)}], expected HxWx3xN");
        }
        int h = x.Dims[0], w = x.Dims[1], n = x.Dims[3];
        if (y.Values.Length != n)
        {
            throw new BnnDataException($"{path}: variable 'y' has {y.Values.Length} labels but 'X' has {n} images");
        }
        var labels = new byte[n];
        for (int i = 0; i < n; i++)
        {
            double v = y.Values[i];
            if (v != Math.Floor(v) || v < 1 || v > 10)
            {
                throw new BnnDataException($"{path}: variable 'y' element {i} is {v}, outside the labels 1-10");
            }
            labels[i] = (byte)(v == 10 ? 0 : v);
        }
        // MATLAB stores column-major: element (r, c, ch, i) at r + H*(c + W*(ch + 3*i)). We want (i, ch, r, c).
        var src = x.Bytes;
        var pixels = new byte[(long)n * 3 * h * w];
        for (int i = 0; i < n; i++)
        {
            for (int ch = 0; ch < 3; ch++)
            {
                int plane = ((i * 3) + ch) * h * w;
                for (int c = 0; c < w; c++)
                {
                    for (int r = 0; r < h; r++)
                    {
                        pixels[plane + (r * w) + c] = src[plane + (c * h) + r];
                    }
                }
            }
        }
        return new ImageSet(pixels, labels, 3, h, w, 10);
    }
}

/// <summary>A numeric MATLAB array: its class name, dimensions, raw uint8 data (for uint8) and values as doubles.</summary>
internal sealed record MatArray(string ClassName, int[] Dims, byte[] Bytes, double[] Values);

/// <summary>
/// Reader for the MATLAB Level 5 MAT-file format (numeric arrays only). A 128-byte header (text, subsystem offset,
/// version 0x0100, endian "IM") is followed by tagged data elements, each padded to 8 bytes; miCOMPRESSED elements
/// wrap one zlib-compressed element.
/// </summary>
internal static class MatV5
{
    private const int MiInt8 = 1, MiUInt8 = 2, MiInt16 = 3, MiUInt16 = 4, MiInt32 = 5, MiUInt32 = 6, MiSingle = 7, MiDouble = 9,
        MiInt64 = 12, MiUInt64 = 13, MiMatrix = 14, MiCompressed = 15;

    private static readonly string[] ClassNames =
        ["?", "cell", "struct", "object", "char", "sparse", "double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"];

    public static Dictionary<string, MatArray> Read(byte[] file, string source)
    {
        if (file.Length < 128)
        {
            throw new BnnDataException($"{source}: truncated MAT-file header ({file.Length} of 128 bytes)");
        }
        var text = Encoding.ASCII.GetString(file, 0, 116);
        if (text.StartsWith("MATLAB 7.3", StringComparison.Ordinal))
        {
            throw new BnnDataException($"{source}: MATLAB v7.3 (HDF5) files are not supported; save with -v7 or -v6");
        }
        if (!text.StartsWith("MATLAB", StringComparison.Ordinal) || file[126] != (byte)'I' || file[127] != (byte)'M')
        {
            throw new BnnDataException($"{source}: not a little-endian MATLAB 5 MAT-file (bad header at offset 0)");
        }
        var vars = new Dictionary<string, MatArray>();
        ReadElements(file, 128, file.Length, source, vars, 0);
        return vars;
    }

    private static void ReadElements(byte[] data, int offset, int end, string source, Dictionary<string, MatArray> vars, int depth)
    {
        while (offset < end)
        {
            if (end - offset < 8)
            {
                throw new BnnDataException($"{source}: truncated data element tag at byte offset {offset}");
            }
            int type = BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(offset));
            long size = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(offset + 4));
            if (size > end - offset - 8)
            {
                throw new BnnDataException($"{source}: data element at byte offset {offset} claims {size} bytes but only {end - offset - 8} remain (truncated)");
            }
            int body = offset + 8;
            if (type == MiCompressed)
            {
                if (depth > 0)
                {
                    throw new BnnDataException($"{source}: nested compressed element at byte offset {offset}");
                }
                byte[] inflated;
                try
                {
                    using var z = new ZLibStream(new MemoryStream(data, body, (int)size), CompressionMode.Decompress);
                    using var ms = new MemoryStream();
                    z.CopyTo(ms);
                    inflated = ms.ToArray();
                }
                catch (InvalidDataException e)
                {
                    throw new BnnDataException($"{source}: corrupt compressed element at byte offset {offset} ({e.Message})", e);
                }
                ReadElements(inflated, 0, inflated.Length, $"{source} (compressed element at byte offset {offset})", vars, depth + 1);
                offset = body + (int)size;
            }
            else
            {
                if (type == MiMatrix)
                {
                    var (name, array) = ReadMatrix(data, body, body + (int)size, source);
                    vars[name] = array;
                }
                offset = body + (int)Align8(size);
            }
        }
    }

    private static (string Name, MatArray Array) ReadMatrix(byte[] data, int offset, int end, string source)
    {
        var (flagsType, flags, next) = ReadSub(data, offset, end, source);
        if (flagsType != MiUInt32 || flags.Length < 8)
        {
            throw new BnnDataException($"{source}: matrix at byte offset {offset} has no array-flags subelement");
        }
        int classId = flags[0];
        string className = classId < ClassNames.Length ? ClassNames[classId] : $"class {classId}";
        var (dimsType, dimsBytes, next2) = ReadSub(data, next, end, source);
        if (dimsType != MiInt32 || dimsBytes.Length % 4 != 0 || dimsBytes.Length == 0)
        {
            throw new BnnDataException($"{source}: matrix at byte offset {offset} has invalid dimensions");
        }
        var dims = Enumerable.Range(0, dimsBytes.Length / 4).Select(i => BinaryPrimitives.ReadInt32LittleEndian(dimsBytes.AsSpan(i * 4))).ToArray();
        var (_, nameBytes, next3) = ReadSub(data, next2, end, source);
        string name = Encoding.ASCII.GetString(nameBytes);
        if (classId is < 6 or > 15 || (flags[1] & 0x08) != 0)
        {
            // Cell, struct, object, char, sparse or complex: not numeric data we can use.
            string kind = (flags[1] & 0x08) != 0 ? "complex " + className : className;
            return (name, new MatArray(kind, dims, [], []));
        }
        var (realType, real, _) = ReadSub(data, next3, end, source);
        long count = dims.Aggregate(1L, (a, d) => a * d);
        if (dims.Any(d => d < 0) || count > int.MaxValue)
        {
            throw new BnnDataException($"{source}: variable '{name}' has invalid dimensions [{string.Join("x", dims)}]");
        }
        int elem = realType switch
        {
            MiInt8 or MiUInt8 => 1,
            MiInt16 or MiUInt16 => 2,
            MiInt32 or MiUInt32 or MiSingle => 4,
            MiDouble or MiInt64 or MiUInt64 => 8,
            _ => throw new BnnDataException($"{source}: variable '{name}' stores data as unsupported type {realType}"),
        };
        if (real.Length < count * elem)
        {
            throw new BnnDataException($"{source}: variable '{name}' holds {real.Length} bytes, needs {count * elem} (truncated)");
        }
        if (className == "uint8" && realType == MiUInt8)
        {
            return (name, new MatArray(className, dims, real, []));
        }
        var values = new double[count];
        for (int i = 0; i < count; i++)
        {
            var s = real.AsSpan(i * elem, elem);
            values[i] = realType switch
            {
                MiInt8 => (sbyte)s[0],
                MiUInt8 => s[0],
                MiInt16 => BinaryPrimitives.ReadInt16LittleEndian(s),
                MiUInt16 => BinaryPrimitives.ReadUInt16LittleEndian(s),
                MiInt32 => BinaryPrimitives.ReadInt32LittleEndian(s),
                MiUInt32 => BinaryPrimitives.ReadUInt32LittleEndian(s),
                MiSingle => BinaryPrimitives.ReadSingleLittleEndian(s),
                MiDouble => BinaryPrimitives.ReadDoubleLittleEndian(s),
                MiInt64 => BinaryPrimitives.ReadInt64LittleEndian(s),
                _ => BinaryPrimitives.ReadUInt64LittleEndian(s),
            };
        }
        var bytes = className == "uint8" ? values.Select(v => (byte)v).ToArray() : [];
        return (name, new MatArray(className, dims, bytes, values));
    }

    /// <summary>Reads a subelement, in normal or small (packed into the tag) form.</summary>
    private static (int Type, byte[] Data, int Next) ReadSub(byte[] data, int offset, int end, string source)
    {
        if (end - offset < 8)
        {
            throw new BnnDataException($"{source}: truncated subelement at byte offset {offset}");
        }
        uint first = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(offset));
        if ((first >> 16) != 0)
        {
            int smallSize = (int)(first >> 16);
            if (smallSize > 4)
            {
                throw new BnnDataException($"{source}: invalid small data element at byte offset {offset}");
            }
            return ((int)(first & 0xFFFF), data.AsSpan(offset + 4, smallSize).ToArray(), offset + 8);
        }
        long size = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(offset + 4));
        if (size > end - offset - 8)
        {
            throw new BnnDataException($"{source}: subelement at byte offset {offset} claims {size} bytes but only {end - offset - 8} remain (truncated)");
        }
        return ((int)first, data.AsSpan(offset + 8, (int)size).ToArray(), offset + 8 + (int)Math.Min(Align8(size), end - offset - 8));
    }

    private static long Align8(long n) => (n + 7) & ~7L;
}
