using System.IO.Compression;
using System.Text;
using Bnn.Data;
using Bnn.IO;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Bnn.Training;

/// <summary>What <see cref="Pack"/> wrote.</summary>
/// <param name="PackPath">The pack.</param>
/// <param name="CompletedEpochs">The epoch it resumes after.</param>
/// <param name="BestEpoch">The best epoch it carries (0 when the run has none), in its own weights or as the latest's.</param>
/// <param name="InputBytes">The checkpoint and its best companion, in bytes.</param>
/// <param name="PackBytes">The pack, in bytes.</param>
public sealed record PackResult(string PackPath, int CompletedEpochs, int BestEpoch, long InputBytes, long PackBytes);

/// <summary>
/// A run's latest checkpoint and its best epoch in one file small enough to commit, so that a run spread over
/// sessions does not depend on a machine keeping its working files: BinaryNet-VGG's 168 MB checkpoint and 56 MB best
/// took 31.1 MB at epoch 1. <c>bnn train --resume</c> takes it like a checkpoint.
/// <para>
/// Latent binary weights are clipped to [−1, 1], so they are stored in 16-bit fixed point, q = round(32767·w): the
/// error is at most 1/65534, about 1/130 of one Adam step at the default rate of 2e-3, and every sign is kept (a
/// negative weight that would round to 0, and so to +1 under sign(0) = +1, is stored as −1/32767). Batch norm and the
/// output temperature are stored exactly. Of Adam's state the pack keeps each parameter's step count and second
/// moments in 8 bits (see <see cref="WriteSecondMoments"/>); the first moments restart from zero, which only damps
/// the first ten or so steps.
/// </para>
/// <para>
/// Layout: magic and the latest header's JSON (plain, so that <c>checkpoint-info</c> reads it without inflating), then a
/// zlib stream: the latest weights, Adam's steps and second moments, a byte saying where the best epoch's weights
/// are, and (when the best is an earlier epoch) its magic, header and weights. Weights go tensor by tensor in
/// state-dict order, each as name, element count, encoding and data.
/// </para>
/// </summary>
public static class CheckpointPack
{
    internal static readonly byte[] Magic = "BNNPACK1"u8.ToArray();

    private const float FixedPointScale = 32767f;

    private enum BestKind : byte
    {
        None = 0,
        SameAsLatest = 1,
        Own = 2,
    }

    private enum TensorEncoding : byte
    {
        Float32 = 0,
        Int64 = 1,
        LatentFixedPoint = 2,
    }

    /// <summary>Packs <paramref name="checkpointPath"/> and, when its run has a best epoch, the best checkpoint beside it.</summary>
    public static PackResult Pack(string checkpointPath, string packPath)
    {
        ArgumentNullException.ThrowIfNull(checkpointPath);
        ArgumentNullException.ThrowIfNull(packPath);
        if (IsPack(checkpointPath))
        {
            throw new BnnDataException($"{checkpointPath} is a pack already");
        }
        var header = Checkpoint.ReadHeader(checkpointPath);
        var bestPath = Trainer.CompanionPaths(checkpointPath).Best;
        var kind = header.BestEpoch <= 0 ? BestKind.None
            : header.BestEpoch == header.CompletedEpochs ? BestKind.SameAsLatest
            : BestKind.Own;
        CheckpointHeader? bestHeader = null;
        if (kind == BestKind.Own)
        {
            bestHeader = File.Exists(bestPath) ? Checkpoint.ReadHeader(bestPath) : null;
            if (bestHeader is null || bestHeader.CompletedEpochs != header.BestEpoch)
            {
                throw new BnnDataException(
                    $"{checkpointPath}: its best epoch ({header.BestEpoch}) is not in {bestPath}, and a pack must carry it (the run's export is the best epoch's)");
            }
        }
        foreach (var input in new[] { checkpointPath, bestPath })
        {
            if (Path.GetFullPath(input) == Path.GetFullPath(packPath))
            {
                throw new BnnDataException($"{packPath} would overwrite the checkpoint it packs");
            }
        }

        using var latest = Checkpoint.NetworkFor(header);
        using var optimizer = header.HasOptimizerState ? optim.Adam(latest.parameters(), header.LearningRate) : null;
        Checkpoint.ReadState(checkpointPath, latest, optimizer);
        using var best = bestHeader is null ? null : Exporter.LoadNetwork(bestPath);
        AtomicFile.Write(packPath, stream =>
        {
            using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
            Checkpoint.WriteHeader(writer, header with { Packed = true }, pack: true);
            writer.Flush();
            using var zlib = new ZLibStream(stream, CompressionLevel.Optimal, leaveOpen: true);
            using var body = new BinaryWriter(zlib, Encoding.UTF8, leaveOpen: true);
            WriteState(body, latest);
            WriteSecondMoments(body, optimizer);
            body.Write((byte)kind);
            if (best is not null)
            {
                Checkpoint.WriteHeader(body, bestHeader! with { Packed = true }, pack: true);
                WriteState(body, best);
            }
        });
        long inputBytes = new FileInfo(checkpointPath).Length + (kind == BestKind.None || !File.Exists(bestPath) ? 0 : new FileInfo(bestPath).Length);
        return new PackResult(packPath, header.CompletedEpochs, Math.Max(0, header.BestEpoch), inputBytes, new FileInfo(packPath).Length);
    }

    /// <summary>Whether <paramref name="path"/> starts like a pack.</summary>
    public static bool IsPack(string path)
    {
        using var stream = File.OpenRead(path);
        Span<byte> magic = stackalloc byte[8];
        return stream.ReadAtLeast(magic, magic.Length, throwOnEndOfStream: false) == magic.Length && magic.SequenceEqual(Magic);
    }

    /// <summary>
    /// Loads the pack's latest weights into <paramref name="net"/>, built from the pack's header, and, when both
    /// exist, Adam's steps and second moments into <paramref name="optimizer"/>, its first moments set to zero.
    /// </summary>
    internal static void ReadLatest(string path, BinaryNetwork net, Adam? optimizer) => ReadBody(path, (body, _) =>
    {
        ReadState(body, net, path);
        ReadSecondMoments(body, optimizer, path);
        return true;
    });

    /// <summary>
    /// Writes the pack's best epoch as an ordinary weights-only checkpoint at <paramref name="bestPath"/>, where a run
    /// resumed from the pack keeps its best. Returns false when the run had no best epoch.
    /// </summary>
    internal static bool ExtractBest(string path, string bestPath)
    {
        return ReadBody(path, (body, latestHeader) =>
        {
            using var net = Checkpoint.NetworkFor(latestHeader);
            ReadState(body, net, path);
            ReadSecondMoments(body, null, path);
            var kind = (BestKind)body.ReadByte();
            CheckpointHeader bestHeader;
            switch (kind)
            {
                case BestKind.None:
                    return false;
                case BestKind.SameAsLatest:
                    bestHeader = latestHeader;
                    break;
                case BestKind.Own:
                    bestHeader = Checkpoint.ReadHeader(body, path, pack: true);
                    ReadState(body, net, path);
                    break;
                default:
                    throw new BnnDataException($"{path}: unknown best-epoch kind {(byte)kind}");
            }
            Checkpoint.Write(bestPath, bestHeader with { Packed = false, HasOptimizerState = false }, net, null);
            return true;
        });
    }

    /// <summary>The 16-bit code of a latent weight in [−1, 1], keeping its sign under sign(0) = +1.</summary>
    internal static short Encode(float latent)
    {
        if (!(Math.Abs(latent) <= 1))
        {
            throw new BnnDataException($"latent weight {latent} is outside [-1, 1]; the run does not clip its weights");
        }
        int q = (int)MathF.Round(latent * FixedPointScale);
        return (short)(latent < 0 ? Math.Min(q, -1) : q);
    }

    internal static float Decode(short code) => code / FixedPointScale;

    /// <summary>
    /// The 8-bit code of a second moment v ≥ 0 of a tensor whose largest is <paramref name="top"/>: quarter octaves
    /// below it, so that v comes back within a factor 2^(1/8) (9 %) and Adam's step, which divides by √v, within
    /// 4.4 %. Code 0 is zero, or a moment more than 63.5 octaves below the largest.
    /// </summary>
    internal static byte EncodeMoment(float v, float top)
    {
        if (!(v > 0))
        {
            return 0;
        }
        double quarters = Math.Round(4 * Math.Log2(top / v));
        return quarters > 254 ? (byte)0 : (byte)(255 - quarters);
    }

    internal static float DecodeMoment(byte code, float top) => code == 0 ? 0 : (float)(top * Math.Pow(2, -(255 - code) / 4.0));

    /// <summary>
    /// Adam's state, as far as a pack keeps it: each parameter's step count and second moments (8-bit), no first
    /// moments. Those are an average over about the last ten steps; the second moments average over about a
    /// thousand, and they carry the run's history: a fresh Adam, or one whose moments are re-estimated at the
    /// resumed weights, takes steps sized for today's smaller gradients at once. Measured on BinaryNet-VGG's epoch-1
    /// checkpoint, 50 steps later (models/README.md): resumed in full, validation 39.3 % and 0.52 million weight
    /// signs changed; from the pack, 39.8 % and 0.50 million; fresh Adam, 36.1 % and 1.52 million; moments
    /// re-estimated over 50 steps at learning rate 0, 35.4 % and 1.81 million.
    /// </summary>
    private static void WriteSecondMoments(BinaryWriter writer, Adam? optimizer)
    {
        var states = optimizer?.state_dict().State.Cast<Adam.State>().ToList() ?? [];
        writer.Write(states.Count);
        foreach (var state in states)
        {
            writer.Write(state.step);
            using var squares = state.exp_avg_sq.contiguous();
            var v = squares.data<float>().ToArray();
            float top = v.Length == 0 ? 0 : v.Max();
            writer.Write(v.LongLength);
            writer.Write(top);
            foreach (var x in v)
            {
                writer.Write(EncodeMoment(x, top));
            }
        }
    }

    private static void ReadSecondMoments(BinaryReader reader, Adam? optimizer, string path)
    {
        int count = reader.ReadInt32();
        var states = optimizer?.state_dict().State.Cast<Adam.State>().ToList();
        if (states is not null && count != 0 && count != states.Count)
        {
            throw new BnnDataException($"{path}: the pack holds Adam's state for {count} parameters where the network has {states.Count}");
        }
        using var _ = no_grad();
        for (int i = 0; i < count; i++)
        {
            long step = reader.ReadInt64();
            long numel = reader.ReadInt64();
            float top = reader.ReadSingle();
            var codes = reader.ReadBytes(checked((int)numel));
            if (codes.Length != numel)
            {
                throw new EndOfStreamException($"Adam's state for parameter {i} ends after {codes.Length} of {numel} values");
            }
            if (states is null)
            {
                // Read only to reach what follows (the best epoch): no tensor to fill.
                continue;
            }
            var state = states[i];
            if (state.exp_avg_sq.numel() != numel)
            {
                throw new BnnDataException($"{path}: Adam's state for parameter {i} has {numel} values where the network has {state.exp_avg_sq.numel()}");
            }
            state.step = step;
            state.exp_avg.zero_();
            // 256 codes per tensor: decode each once, not once per value.
            var decoded = Enumerable.Range(0, 256).Select(code => DecodeMoment((byte)code, top)).ToArray();
            using var source = tensor(Array.ConvertAll(codes, code => decoded[code]), state.exp_avg_sq.shape);
            state.exp_avg_sq.copy_(source);
        }
    }

    private static T ReadBody<T>(string path, Func<BinaryReader, CheckpointHeader, T> read)
    {
        try
        {
            using var stream = File.OpenRead(path);
            using var reader = new BinaryReader(stream);
            var header = Checkpoint.ReadHeader(reader, path, pack: true);
            using var zlib = new ZLibStream(stream, CompressionMode.Decompress);
            using var body = new BinaryReader(zlib);
            return read(body, header);
        }
        catch (Exception e) when (e is EndOfStreamException or InvalidDataException)
        {
            throw new BnnDataException($"{path}: truncated or corrupt pack ({e.Message})", e);
        }
    }

    private static void WriteState(BinaryWriter writer, BinaryNetwork net)
    {
        var latent = LatentNames(net);
        var state = net.state_dict();
        writer.Write(state.Count);
        foreach (var (name, tensor) in state)
        {
            writer.Write(name);
            writer.Write(tensor.numel());
            using var values = tensor.contiguous();
            if (latent.Contains(name))
            {
                writer.Write((byte)TensorEncoding.LatentFixedPoint);
                foreach (var w in values.data<float>())
                {
                    writer.Write(Encode(w));
                }
            }
            else if (tensor.dtype == ScalarType.Float32)
            {
                writer.Write((byte)TensorEncoding.Float32);
                foreach (var v in values.data<float>())
                {
                    writer.Write(v);
                }
            }
            else if (tensor.dtype == ScalarType.Int64)
            {
                writer.Write((byte)TensorEncoding.Int64);
                foreach (var v in values.data<long>())
                {
                    writer.Write(v);
                }
            }
            else
            {
                throw new BnnDataException($"{name}: a {tensor.dtype} tensor has no pack encoding");
            }
        }
    }

    /// <summary>
    /// The state-dict names of the latent binary weights (none in a float twin, whose weights are not clipped):
    /// each binary stage registers its latent as <c>weight</c> in the <c>stages</c> list.
    /// </summary>
    internal static HashSet<string> LatentNames(BinaryNetwork net)
    {
        if (!net.Binarized)
        {
            return [];
        }
        var names = net.Stages.Select((stage, i) => (stage, i)).Where(s => s.stage is BinaryNetwork.IBinaryWeights)
            .Select(s => $"stages.{s.i}.weight").ToHashSet();
        var state = net.state_dict();
        var missing = names.Where(n => !state.ContainsKey(n)).ToList();
        if (missing.Count > 0)
        {
            throw new InvalidOperationException($"latent weights not in the state dict under the expected names: {string.Join(", ", missing)}");
        }
        return names;
    }

    private static void ReadState(BinaryReader reader, BinaryNetwork net, string path)
    {
        var state = net.state_dict();
        int count = reader.ReadInt32();
        if (count != state.Count)
        {
            throw new BnnDataException($"{path}: the pack holds {count} tensors where the network has {state.Count}");
        }
        using var _ = no_grad();
        for (int i = 0; i < count; i++)
        {
            var name = reader.ReadString();
            long numel = reader.ReadInt64();
            var encoding = (TensorEncoding)reader.ReadByte();
            if (!state.TryGetValue(name, out var target) || target.numel() != numel)
            {
                throw new BnnDataException($"{path}: tensor {name} ({numel} values) does not fit the network its header describes");
            }
            // The source tensor is held until the copy is done: a wrapper the GC sees as dead may be finalized,
            // freeing its native tensor, while libtorch is still reading it (it crashed so, loading BinaryNet-VGG).
            using var source = encoding switch
            {
                TensorEncoding.LatentFixedPoint => tensor(ReadArray(reader, numel, r => Decode(r.ReadInt16())), target.shape),
                TensorEncoding.Float32 => tensor(ReadArray(reader, numel, r => r.ReadSingle()), target.shape),
                TensorEncoding.Int64 => tensor(ReadArray(reader, numel, r => r.ReadInt64()), target.shape),
                _ => throw new BnnDataException($"{path}: tensor {name} has unknown encoding {(byte)encoding}"),
            };
            target.copy_(source);
        }
    }

    private static T[] ReadArray<T>(BinaryReader reader, long count, Func<BinaryReader, T> read)
    {
        var values = new T[count];
        for (long i = 0; i < count; i++)
        {
            values[i] = read(reader);
        }
        return values;
    }
}
