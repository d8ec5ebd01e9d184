using Bnn.Data;
using Bnn.Model;

namespace Bnn.Engine;

/// <summary>An executor of a <see cref="BnnModel"/>: integer class scores for each image.</summary>
public interface IEngine
{
    /// <summary>Short name (reference, fast, shared).</summary>
    string Name { get; }

    /// <summary>The model it runs.</summary>
    BnnModel Model { get; }

    /// <summary>
    /// Writes the integer scores of images [start, start+count) of <paramref name="images"/> into
    /// <paramref name="scores"/> (count x classes), using up to <paramref name="threads"/> threads.
    /// </summary>
    void Score(ImageSet images, int start, int count, Span<int> scores, int threads = 1);
}

/// <summary>Helpers shared by every engine.</summary>
public static class EngineExtensions
{
    /// <summary>The index of the largest score, ties going to the lowest index.</summary>
    public static int ArgMax(ReadOnlySpan<int> scores)
    {
        int best = 0;
        for (int i = 1; i < scores.Length; i++)
        {
            if (scores[i] > scores[best])
            {
                best = i;
            }
        }
        return best;
    }

    /// <summary>How many predictions equal the images' labels.</summary>
    public static int CountCorrect(ReadOnlySpan<int> predictions, ImageSet images)
    {
        ArgumentNullException.ThrowIfNull(images);
        int correct = 0;
        for (int i = 0; i < predictions.Length; i++)
        {
            correct += predictions[i] == images.Labels[i] ? 1 : 0;
        }
        return correct;
    }

    /// <summary>The fraction of predictions that equal the images' labels.</summary>
    public static double Accuracy(ReadOnlySpan<int> predictions, ImageSet images) =>
        (double)CountCorrect(predictions, images) / images.Count;

    /// <summary>Scores every image and returns (scores, predictions).</summary>
    public static (int[] Scores, int[] Predictions) Run(this IEngine engine, ImageSet images, int threads = 1)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(images);
        int classes = engine.Model.Classes;
        var scores = new int[images.Count * classes];
        engine.Score(images, 0, images.Count, scores, threads);
        var predictions = new int[images.Count];
        for (int i = 0; i < images.Count; i++)
        {
            predictions[i] = ArgMax(scores.AsSpan(i * classes, classes));
        }
        return (scores, predictions);
    }

    /// <summary>Checks that images match the model's input shape.</summary>
    internal static void CheckInput(BnnModel model, ImageSet images, int start, int count, int scoreLength)
    {
        if (images.Channels != model.Input.Channels || images.Height != model.Input.Height || images.Width != model.Input.Width)
        {
            throw new BnnDataException(
                $"{model.Source}: expects {model.Input} images but the data has {images.Channels}x{images.Height}x{images.Width}");
        }
        ArgumentOutOfRangeException.ThrowIfNegative(start);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(start + count, images.Count);
        ArgumentOutOfRangeException.ThrowIfLessThan(scoreLength, count * model.Classes);
    }

    /// <summary>Runs <paramref name="body"/>(image index, worker) over a range on up to <paramref name="threads"/> workers.</summary>
    internal static void ForEachImage(int start, int count, int threads, Action<int, int> body)
    {
        int workers = Math.Max(1, Math.Min(threads, count));
        if (workers == 1)
        {
            for (int i = start; i < start + count; i++)
            {
                body(i, 0);
            }
            return;
        }
        int next = start - 1;
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, worker =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < start + count)
            {
                body(i, worker);
            }
        });
    }
}
