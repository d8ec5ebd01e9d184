using Bnn.Engine;
using Bnn.Model;

namespace Bnn.Tests.Engine;

/// <summary>
/// Runs alone: the two-thread test counts every thread's allocations, which other tests running beside it would add to.
/// </summary>
[Collection(Serial.Name)]
public sealed class AllocationTests
{
    [Theory]
    [InlineData("fast")]
    [InlineData("shared")] // every supported layer on the plane conv: its scratch lives in the workspace too
    public void Engine_SingleThreadSteadyState_AllocatesNothingPerImage(string name)
    {
        var model = RandomModels.Create(Architectures.Build("cnv", 0.25), new Shape(3, 32, 32), seed: 2);
        IEngine engine = name == "fast" ? new PackedEngine(model) : new SharedEngine(model, selection: LayerSelection.Shared);
        var images = TestData.RandomImages(8, 3);
        var scores = new int[images.Count * model.Classes];
        engine.Score(images, 0, images.Count, scores);
        long before = GC.GetAllocatedBytesForCurrentThread();
        engine.Score(images, 0, images.Count, scores);
        // Nothing at all, not even per call (a captured-lambda closure once cost 56 bytes per call here).
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void FastEngine_OneImageOnTwoThreads_AllocatesNothingPerImage()
    {
        var model = RandomModels.Create(Architectures.Build("cnv", 0.25), new Shape(3, 32, 32), seed: 2);
        var engine = new PackedEngine(model);
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
        // Every thread's allocations, the helper's included.
        long before = GC.GetTotalAllocatedBytes(precise: true);
        ScoreOneByOne();
        Assert.Equal(0, GC.GetTotalAllocatedBytes(precise: true) - before);
    }
}

/// <summary>A collection whose tests run while no other test does.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class Serial
{
    public const string Name = "serial";
}
