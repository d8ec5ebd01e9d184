using Bnn.Engine;
using Bnn.Model;

namespace Bnn.Tests.Engine;

public sealed class AllocationTests
{
    [Theory]
    [InlineData("fast")]
    [InlineData("fast-bitsliced")] // every binary conv bit-sliced (where the machine has AVX-512F): its scratch too
    [InlineData("shared")] // every supported layer on the plane conv: its scratch lives in the workspace too
    public void Engine_SingleThreadSteadyState_AllocatesNothingPerImage(string name)
    {
        var model = RandomModels.Create(Architectures.Build("cnv", 0.25), new Shape(3, 32, 32), seed: 2);
        var engine = Create(name, model);
        var images = TestData.RandomImages(8, 3);
        var scores = new int[images.Count * model.Classes];
        engine.Score(images, 0, images.Count, scores);
        // Nothing at all, not even per call (a captured-lambda closure once cost 56 bytes per call here).
        AssertOneCleanPassOfThree(() => engine.Score(images, 0, images.Count, scores));
    }

    [Theory]
    [InlineData("fast")]
    [InlineData("fast-bitsliced")]
    public void FastEngine_OneImageOnTwoThreads_AllocatesNothingPerImage(string name)
    {
        var model = RandomModels.Create(Architectures.Build("cnv", 0.25), new Shape(3, 32, 32), seed: 2);
        var engine = Create(name, model);
        var images = TestData.RandomImages(8, 3);
        var scores = new int[model.Classes];
        void ScoreOneByOne()
        {
            for (int i = 0; i < images.Count; i++)
            {
                engine.Score(images, i, 1, scores, threads: 2);
            }
        }
        ScoreOneByOne();
        // The caller's allocations. The helper runs the same step code as one thread does (the test above); counting
        // every thread's bytes would also count other tests' and the thread pool's own.
        AssertOneCleanPassOfThree(ScoreOneByOne);
    }

    /// <summary>
    /// The evidence is one pass of <paramref name="pass"/> that allocates nothing on this thread, out of three: an
    /// allocation of ours would recur on every pass. The runtime can put a one-off on the thread: queuing a helper can
    /// make the pool start a worker on the caller's thread when other tests keep its workers busy, and once (a clean
    /// clone's CI, session 11) a warmed-up single-thread call read 2,808 bytes, where every run before and since read 0.
    /// </summary>
    private static void AssertOneCleanPassOfThree(Action pass)
    {
        var bytes = new List<long>();
        do
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            pass();
            bytes.Add(GC.GetAllocatedBytesForCurrentThread() - before);
        }
        while (bytes[^1] != 0 && bytes.Count < 3);
        Assert.True(bytes[^1] == 0, $"bytes allocated on this thread per pass: {string.Join(", ", bytes)}");
    }

    private static IEngine Create(string name, BnnModel model) => name switch
    {
        "fast" => new PackedEngine(model),
        "shared" => new SharedEngine(model, selection: LayerSelection.Shared),
        _ => EngineEquivalenceTests.Names().Contains(name) ? EngineEquivalenceTests.Create(name, model) : new PackedEngine(model),
    };
}
