using System.IO.Compression;
using System.Text;

namespace Bnn.Tests.Data;

/// <summary>Writes small MATLAB v5 files for the SVHN tests (no SVHN copy is reachable here).</summary>
internal static class MatWriter
{
    public const int ClassDouble = 6, ClassSingle = 7, ClassUInt8 = 9, ClassChar = 4;
    public const int MiInt8 = 1, MiUInt8 = 2, MiInt32 = 5, MiUInt32 = 6, MiSingle = 7, MiDouble = 9, MiMatrix = 14, MiCompressed = 15;

    public sealed record Variable(string Name, int ClassId, int[] Dims, int DataType, byte[] Data);

    public static byte[] Write(IEnumerable<Variable> vars, bool compress)
    {
        using var ms = new MemoryStream();
        var header = new byte[128];
        Encoding.ASCII.GetBytes("MATLAB 5.0 MAT-file, written by bnn tests".PadRight(116)).CopyTo(header, 0);
        header[124] = 0x00;
        header[125] = 0x01;
        header[126] = (byte)'I';
        header[127] = (byte)'M';
        ms.Write(header);
        foreach (var v in vars)
        {
            var matrix = Element(MiMatrix, Matrix(v));
            if (compress)
            {
                using var z = new MemoryStream();
                using (var zs = new ZLibStream(z, CompressionLevel.Fastest))
                {
                    zs.Write(matrix);
                }
                var packed = z.ToArray();
                ms.Write(Tag(MiCompressed, packed.Length));
                ms.Write(packed);
            }
            else
            {
                ms.Write(matrix);
            }
        }
        return ms.ToArray();
    }

    /// <summary>The SVHN layout: X uint8 HxWx3xN column-major from planar images, y double Nx1 with 10 for digit 0.</summary>
    public static byte[] Svhn(Bnn.Data.ImageSet set, bool compress, string xName = "X", int xClass = ClassUInt8)
    {
        int n = set.Count, h = set.Height, w = set.Width;
        var x = new byte[n * 3 * h * w];
        for (int i = 0; i < n; i++)
        {
            for (int ch = 0; ch < 3; ch++)
            {
                for (int r = 0; r < h; r++)
                {
                    for (int c = 0; c < w; c++)
                    {
                        x[((((i * 3) + ch) * w) + c) * h + r] = set.Image(i)[(ch * h * w) + (r * w) + c];
                    }
                }
            }
        }
        var y = new byte[n * 8];
        for (int i = 0; i < n; i++)
        {
            BitConverter.GetBytes(set.Labels[i] == 0 ? 10.0 : set.Labels[i]).CopyTo(y, i * 8);
        }
        return Write(
        [
            new Variable(xName, xClass, [h, w, 3, n], MiUInt8, x),
            new Variable("y", ClassDouble, [n, 1], MiDouble, y),
        ], compress);
    }

    private static byte[] Matrix(Variable v)
    {
        using var ms = new MemoryStream();
        var flags = new byte[8];
        flags[0] = (byte)v.ClassId;
        ms.Write(Element(MiUInt32, flags));
        ms.Write(Element(MiInt32, v.Dims.SelectMany(BitConverter.GetBytes).ToArray()));
        ms.Write(Element(MiInt8, Encoding.ASCII.GetBytes(v.Name)));
        ms.Write(Element(v.DataType, v.Data));
        return ms.ToArray();
    }

    private static byte[] Element(int type, byte[] data)
    {
        int padded = (data.Length + 7) & ~7;
        var result = new byte[8 + padded];
        Tag(type, data.Length).CopyTo(result, 0);
        data.CopyTo(result, 8);
        return result;
    }

    private static byte[] Tag(int type, int size) => [.. BitConverter.GetBytes(type), .. BitConverter.GetBytes(size)];
}
