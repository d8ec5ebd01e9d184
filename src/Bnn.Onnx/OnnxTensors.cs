using System.Buffers.Binary;
using Bnn.Data;
using Bnn.Onnx.Proto;
using Google.Protobuf;

namespace Bnn.Onnx;

/// <summary>A constant tensor of the graph, its values widened to double (exact for float32 and small integers).</summary>
internal sealed record Constant(long[] Dims, double[] Values)
{
    public long Count => Values.Length;

    public bool IsScalarLike => Values.Length == 1;

    /// <summary>The ONNX element types we read (TensorProto.DataType).</summary>
    public const int Float = 1, Int32 = 6, Int64 = 7, Double = 11;

    /// <summary>Elements we are willing to hold in one constant: the largest BNN layer has far fewer.</summary>
    public const long MaxElements = 1L << 26;

    /// <summary>Reads a TensorProto, checking the element count against the dims before allocating anything.</summary>
    public static Constant Read(TensorProto t, string what)
    {
        if (t.DataLocation != 0)
        {
            throw new BnnDataException($"{what}: tensor data stored in an external file is not supported; save the model with its weights inside");
        }
        long count = 1;
        foreach (long d in t.Dims)
        {
            if (d < 0 || d > MaxElements)
            {
                throw new BnnDataException($"{what}: tensor dimension {d} is out of range");
            }
            count *= d;
            if (count > MaxElements)
            {
                throw new BnnDataException($"{what}: tensor of more than {MaxElements} elements");
            }
        }
        var dims = t.Dims.ToArray();
        int n = (int)count;
        int width = t.DataType switch
        {
            Float or Int32 => 4,
            Int64 or Double => 8,
            _ => throw new BnnDataException($"{what}: tensor element type {t.DataType} is not supported (float, double, int32 or int64)"),
        };
        if (!t.RawData.IsEmpty)
        {
            var raw = t.RawData.Span;
            if (raw.Length != (long)n * width)
            {
                throw new BnnDataException($"{what}: raw data holds {raw.Length} bytes, expected {(long)n * width} for dims [{string.Join(",", dims)}]");
            }
            var values = new double[n];
            for (int i = 0; i < n; i++)
            {
                var b = raw.Slice(i * width, width);
                values[i] = t.DataType switch
                {
                    Float => BinaryPrimitives.ReadSingleLittleEndian(b),
                    Int32 => BinaryPrimitives.ReadInt32LittleEndian(b),
                    Int64 => BinaryPrimitives.ReadInt64LittleEndian(b),
                    _ => BinaryPrimitives.ReadDoubleLittleEndian(b),
                };
            }
            return new Constant(dims, values);
        }
        IReadOnlyList<double> typed = t.DataType switch
        {
            Float => t.FloatData.Select(v => (double)v).ToArray(),
            Int32 => t.Int32Data.Select(v => (double)v).ToArray(),
            Int64 => t.Int64Data.Select(v => (double)v).ToArray(),
            _ => t.DoubleData.ToArray(),
        };
        if (typed.Count != n)
        {
            throw new BnnDataException($"{what}: holds {typed.Count} values, expected {n} for dims [{string.Join(",", dims)}]");
        }
        return new Constant(dims, [.. typed]);
    }

    /// <summary>A float32 tensor in raw little-endian form, as exporters usually write weights.</summary>
    public static TensorProto FloatTensor(string name, float[] values, params long[] dims)
    {
        var raw = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(raw.AsSpan(i * 4), values[i]);
        }
        var t = new TensorProto { Name = name, DataType = Float, RawData = ByteString.CopyFrom(raw) };
        t.Dims.AddRange(dims);
        return t;
    }

    /// <summary>An int64 tensor (shapes, pads).</summary>
    public static TensorProto Int64Tensor(string name, long[] values, params long[] dims)
    {
        var t = new TensorProto { Name = name, DataType = Int64 };
        t.Int64Data.AddRange(values);
        t.Dims.AddRange(dims);
        return t;
    }
}
