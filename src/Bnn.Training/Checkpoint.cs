using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Bnn.Data;
using Bnn.IO;
using Bnn.Model;
using TorchSharp.Modules;

namespace Bnn.Training;

/// <summary>What a checkpoint says about its run, stored as a JSON header in front of the tensors.</summary>
internal sealed record CheckpointHeader
{
    public int FormatVersion { get; init; } = 1;
    public required string Arch { get; init; }
    public required double Width { get; init; }
    public required string Dataset { get; init; }
    public required int Classes { get; init; }
    public required int BinaryPadValue { get; init; }
    public required int Seed { get; init; }
    public required int Epochs { get; init; }
    public required double LearningRate { get; init; }
    public required int BatchSize { get; init; }
    public required int ValidationCount { get; init; }
    /// <summary>Epochs completed so far.</summary>
    public required int CompletedEpochs { get; init; }
    public required int BestEpoch { get; init; }
    public required double BestValidationAccuracy { get; init; }
    public required IReadOnlyList<EpochRecord> History { get; init; }
    /// <summary>Whether the optimizer state follows the model (latest checkpoints) or not (best-model snapshots).</summary>
    public required bool HasOptimizerState { get; init; }
    /// <summary>The epochs whose weights were averaged into this checkpoint (<see cref="WeightAveraging"/>); null otherwise.</summary>
    public IReadOnlyList<int>? AveragedEpochs { get; init; }
    /// <summary>Training images the averaged checkpoint's batch-norm statistics were re-estimated on; null if none.</summary>
    public int? RecalibrationImages { get; init; }
    /// <summary>True for a float twin (<c>bnn train --float</c>), a distillation teacher that has no bit-packed model.</summary>
    public bool Float { get; init; }
    /// <summary>The teacher checkpoints the run distilled from (full paths); null if none, or in checkpoints written before ensembles.</summary>
    public IReadOnlyList<string>? Teachers { get; init; }
    /// <summary>The one teacher of a checkpoint written before ensembles (<see cref="Teachers"/>); read, never written.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Teacher { get; init; }
    /// <summary>α and T of the distillation loss, when the run has teachers.</summary>
    public double? DistillWeight { get; init; }
    public double? DistillTemperature { get; init; }
    /// <summary>The epoch the current cosine cycle started from (a --restart-lr resume); 0 for one schedule over the whole run.</summary>
    public int CycleStart { get; init; }
    /// <summary>The training augmentation; null in checkpoints written before it was an option (their dataset's default).</summary>
    [JsonConverter(typeof(JsonStringEnumConverter<Augmentation>))]
    public Augmentation? Augmentation { get; init; }

    /// <summary>Whether the run trained channels-last; null in checkpoints written before this was recorded.</summary>
    public bool? ChannelsLast { get; init; }
    /// <summary>
    /// Whether the run multiplies binary convs in bfloat16, as chosen (a host without bfloat16 dot products runs such a
    /// run in float32 and keeps the choice); null in checkpoints written before this was recorded.
    /// </summary>
    public bool? Bf16BinaryConvs { get; init; }
    /// <summary>Whether the run pools before batch norm (<see cref="BinaryNetwork.PoolBeforeNorm"/>); null in checkpoints written before it was an option (after the sign).</summary>
    public bool? PoolBeforeNorm { get; init; }
    /// <summary>The run's decoupled weight decay (<see cref="TrainOptions.WeightDecay"/>); null in checkpoints written before it was an option (none).</summary>
    public double? WeightDecay { get; init; }
    /// <summary>True in a <see cref="CheckpointPack"/>: latent binary weights in 16-bit fixed point (a float twin's in float32), of Adam's state only its steps and second moments.</summary>
    public bool Packed { get; init; }

    /// <summary>The run's teachers, whichever field recorded them; empty if none.</summary>
    [JsonIgnore]
    public IReadOnlyList<string> TeacherPaths => Teachers ?? (Teacher is null ? [] : [Teacher]);

    /// <summary>What the run's training steps augmented with.</summary>
    public Augmentation TrainingAugmentation => Augmentation ?? TrainOptions.DefaultAugmentation(Dataset);
}

/// <summary>
/// One-file checkpoints: magic, JSON header, TorchSharp state dict, then (optionally) Adam's state. Writes go to a
/// temporary file that is renamed over the old one, so a run killed at any moment leaves the previous checkpoint
/// intact and loses at most the epoch in progress.
/// </summary>
internal static class Checkpoint
{
    private static readonly byte[] Magic = "BNNCKPT1"u8.ToArray();

    public static void Write(string path, CheckpointHeader header, BinaryNetwork net, Adam? optimizer)
    {
        AtomicFile.Write(path, stream =>
        {
            using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
            WriteHeader(writer, header with { HasOptimizerState = optimizer is not null }, pack: false);
            net.save(writer);
            optimizer?.save_state_dict(writer);
        });
    }

    /// <summary>The header of a checkpoint or of a <see cref="CheckpointPack"/>.</summary>
    public static CheckpointHeader ReadHeader(string path)
    {
        using var stream = File.OpenRead(path);
        using var reader = new BinaryReader(stream);
        return ReadHeader(reader, path, null);
    }

    /// <summary>
    /// Loads weights (and optimizer state, when both exist) into objects built from the header; from a pack, its
    /// latest weights and as much of Adam's state as it keeps.
    /// </summary>
    public static void ReadState(string path, BinaryNetwork net, Adam? optimizer)
    {
        if (CheckpointPack.IsPack(path))
        {
            CheckpointPack.ReadLatest(path, net, optimizer);
            return;
        }
        using var stream = File.OpenRead(path);
        using var reader = new BinaryReader(stream);
        var header = ReadHeader(reader, path, pack: false);
        net.load(reader);
        if (optimizer is not null && header.HasOptimizerState)
        {
            optimizer.load_state_dict(reader);
        }
    }

    /// <summary>Reads the magic and the JSON header: of a checkpoint, of a pack (<paramref name="pack"/>), or of either (null).</summary>
    internal static CheckpointHeader ReadHeader(BinaryReader reader, string path, bool? pack)
    {
        try
        {
            var magic = reader.ReadBytes(Magic.Length).AsSpan();
            bool isCheckpoint = magic.SequenceEqual(Magic), isPack = magic.SequenceEqual(CheckpointPack.Magic);
            if (!(pack switch { true => isPack, false => isCheckpoint, null => isCheckpoint || isPack }))
            {
                throw new BnnDataException($"{path}: not a bnn training {(pack == true ? "checkpoint pack" : "checkpoint")} (bad magic)");
            }
            int length = reader.ReadInt32();
            if (length <= 0 || length > 16 << 20)
            {
                throw new BnnDataException($"{path}: checkpoint header length {length} is invalid");
            }
            return JsonSerializer.Deserialize<CheckpointHeader>(reader.ReadBytes(length))
                ?? throw new BnnDataException($"{path}: empty checkpoint header");
        }
        catch (Exception e) when (e is EndOfStreamException or JsonException)
        {
            throw new BnnDataException($"{path}: truncated or corrupt checkpoint ({e.Message})", e);
        }
    }

    /// <summary>A network of the architecture a header describes, with its initial weights.</summary>
    internal static BinaryNetwork NetworkFor(CheckpointHeader header, bool channelsLast = false) =>
        new(Architectures.Build(header.Arch, header.Width, header.Classes), binaryPadValue: header.BinaryPadValue,
            channelsLast: channelsLast, binarized: !header.Float, poolBeforeNorm: header.PoolBeforeNorm ?? false);

    /// <summary>Writes the magic of a checkpoint or of a pack, then the header as length-prefixed JSON.</summary>
    internal static void WriteHeader(BinaryWriter writer, CheckpointHeader header, bool pack)
    {
        writer.Write(pack ? CheckpointPack.Magic : Magic);
        var json = JsonSerializer.SerializeToUtf8Bytes(header);
        writer.Write(json.Length);
        writer.Write(json);
    }
}
