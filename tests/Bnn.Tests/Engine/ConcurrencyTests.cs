using Bnn.Engine;
using Bnn.Engine.Reference;
using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>One engine instance scored from several threads at once gives what it gives one call at a time.</summary>
public sealed class ConcurrencyTests
{
    [Theory]
    [InlineData("fast", 1)]
    [InlineData("fast", 2)]   // single images split across two threads: only one call at a time may hold the splitter
    [InlineData("fast", 3)]   // parallel over images: each call rents its own workers' workspaces
    [InlineData("shared", 1)]
    [InlineData("shared", 2)]
    public void Engine_ScoredFromFourThreadsAtOnce_MatchesTheReference(string name, int threadsPerCall)
    {
        var model = RandomModels.Create(Architectures.Build("cnv", 0.25), new Shape(3, 32, 32), seed: 5);
        IEngine engine = name == "fast" ? new PackedEngine(model) : new SharedEngine(model, selection: LayerSelection.Shared);
        var images = TestData.RandomImages(16, seed: 9);
        var (expected, _) = new ReferenceEngine(model).Run(images);
        int classes = model.Classes, callers = 4, rounds = 20;
        // Parallel over images needs more than one image per call; the other paths score one at a time.
        int perCall = threadsPerCall >= 3 ? 4 : 1, starts = images.Count - perCall + 1;
        var failures = new int[callers];
        using var begin = new Barrier(callers);
        var threads = Enumerable.Range(0, callers).Select(c => new Thread(() =>
        {
            var scores = new int[perCall * classes];
            begin.SignalAndWait();
            for (int r = 0; r < rounds; r++)
            {
                for (int k = 0; k < starts; k++)
                {
                    // Each caller walks its own rotation of the images, so that concurrent calls score different ones.
                    int first = (k + (c * 3)) % starts;
                    engine.Score(images, first, perCall, scores, threadsPerCall);
                    if (!scores.AsSpan().SequenceEqual(expected.AsSpan(first * classes, perCall * classes)))
                    {
                        failures[c]++;
                    }
                }
            }
        }) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        // A deadlock (two calls once shared the image splitter and hung) must fail the test, not stall the suite.
        Assert.All(threads, t => Assert.True(t.Join(TimeSpan.FromMinutes(2)), "a caller did not finish"));
        Assert.All(failures, f => Assert.Equal(0, f));
    }
}
