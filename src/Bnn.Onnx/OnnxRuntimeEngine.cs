using Bnn.Data;
using Bnn.Engine;
using Bnn.Model;
using Microsoft.ML.OnnxRuntime;

namespace Bnn.Onnx;

/// <summary>
/// ONNX Runtime running an ONNX graph on raw pixels (float32 0..255, NCHW), for `bnn check`, `bnn eval --engine
/// onnxruntime` and the benchmarks. One session per thread count; images go through in batches.
/// </summary>
public sealed class OnnxRuntimeEngine : IEngine, IDisposable
{
    private readonly byte[] onnx;
    private readonly Dictionary<int, InferenceSession> sessions = [];
    private readonly GraphOptimizationLevel optimization;

    /// <summary>Creates an engine for <paramref name="onnxBytes"/>; <paramref name="model"/> gives shapes and classes.</summary>
    public OnnxRuntimeEngine(BnnModel model, byte[] onnxBytes, int batchSize = 64, bool optimize = true)
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        onnx = onnxBytes ?? throw new ArgumentNullException(nameof(onnxBytes));
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        BatchSize = batchSize;
        optimization = optimize ? GraphOptimizationLevel.ORT_ENABLE_ALL : GraphOptimizationLevel.ORT_DISABLE_ALL;
    }

    /// <summary>The runtime's version, for reports.</summary>
    public static string RuntimeVersion => OrtEnv.Instance().GetVersionString();

    /// <inheritdoc/>
    public string Name => "onnxruntime";

    /// <inheritdoc/>
    public BnnModel Model { get; }

    /// <summary>Images per Run call.</summary>
    public int BatchSize { get; }

    /// <summary>The graph's float outputs for images [start, start + count), count × classes.</summary>
    public float[] ScoreFloat(ImageSet images, int start, int count, int threads = 1)
    {
        EngineExtensions.CheckInput(Model, images, start, count, count * Model.Classes);
        var session = Session(threads);
        string inputName = session.InputMetadata.Keys.Single();
        string outputName = session.OutputMetadata.Keys.Single();
        int classes = Model.Classes, size = images.ImageSize;
        var result = new float[count * classes];
        var batch = new float[Math.Min(BatchSize, Math.Max(count, 1)) * size];
        using var runOptions = new RunOptions();
        for (int done = 0; done < count; done += BatchSize)
        {
            int n = Math.Min(BatchSize, count - done);
            var pixels = images.Pixels.AsSpan((start + done) * size, n * size);
            for (int i = 0; i < pixels.Length; i++)
            {
                batch[i] = pixels[i];
            }
            using var input = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, batch.AsMemory(0, n * size),
                [n, images.Channels, images.Height, images.Width]);
            using var outputs = session.Run(runOptions, [inputName], [input], [outputName]);
            var scores = outputs[0].GetTensorDataAsSpan<float>();
            if (scores.Length != n * classes)
            {
                throw new BnnDataException($"ONNX Runtime returned {scores.Length} scores for {n} images of {classes} classes");
            }
            scores.CopyTo(result.AsSpan(done * classes));
        }
        return result;
    }

    /// <summary>Integer scores; the graph's outputs must be integers (as in every graph we export).</summary>
    public void Score(ImageSet images, int start, int count, Span<int> scores, int threads = 1)
    {
        var floats = ScoreFloat(images, start, count, threads);
        for (int i = 0; i < floats.Length; i++)
        {
            float v = floats[i];
            if (MathF.Round(v) != v || Math.Abs(v) > 1 << 24)
            {
                throw new BnnDataException($"ONNX Runtime score {v} is not an integer; compare predictions with `bnn check` instead");
            }
            scores[i] = (int)v;
        }
    }

    /// <summary>Argmax of each image's float scores, ties to the lowest index, as our engines predict.</summary>
    public static int[] Predictions(ReadOnlySpan<float> scores, int classes)
    {
        var predictions = new int[scores.Length / classes];
        for (int i = 0; i < predictions.Length; i++)
        {
            var row = scores.Slice(i * classes, classes);
            int best = 0;
            for (int c = 1; c < classes; c++)
            {
                if (row[c] > row[best])
                {
                    best = c;
                }
            }
            predictions[i] = best;
        }
        return predictions;
    }

    private InferenceSession Session(int threads)
    {
        lock (sessions)
        {
            if (!sessions.TryGetValue(threads, out var session))
            {
                using var options = new SessionOptions
                {
                    IntraOpNumThreads = Math.Max(1, threads),
                    InterOpNumThreads = 1,
                    GraphOptimizationLevel = optimization,
                    ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
                };
                try
                {
                    session = new InferenceSession(onnx, options);
                }
                catch (OnnxRuntimeException e)
                {
                    throw new BnnDataException($"ONNX Runtime rejected the model: {e.Message}", e);
                }
                sessions[threads] = session;
            }
            return session;
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var s in sessions.Values)
        {
            s.Dispose();
        }
        sessions.Clear();
    }
}
