namespace Bnn.Engine;

/// <summary>
/// Scores one image on two threads: every step that <see cref="PackedStep.Splits"/> runs the first half of its output
/// positions on the calling thread and the second half on a helper from the thread pool. Parallel over images, a
/// batch of one would leave the second core idle.
/// <para>The helper is a thread-pool work item that lives for one image and busy-waits between steps (a step takes a
/// few µs, less than a thread's wake-up). Each half-step is claimed by a compare-and-swap on its generation number,
/// and the caller claims the second half itself when the helper has not, so a late or absent helper (a busy pool)
/// costs speed, never progress. Not for concurrent use: the engine lends it to one <c>Score</c> call at a time.</para>
/// <para>Measured on the CNV (Zen 5, <c>bnn bench</c> at batch 1): 15,500 images/s on one thread, 26,580 on two
/// (1.7x). The halves take 10-25 % longer than half a step, as each core reads activations the other wrote; pooling
/// and the small late layers stay on one thread.</para>
/// </summary>
internal sealed class ImageSplitter : IThreadPoolWorkItem
{
    private const int Parts = 2;
    private readonly int[] helperAccumulators;
    private PackedStep? step;
    private ulong[] source = [];
    private ulong[] output = [];
    private Exception? helperFailure;
    private long published;  // generation of the last half-step offered
    private long claimed;    // generation of the last second half someone took
    private long completed;  // generation of the last second half the helper finished
    private int active;      // 1 while an image is being scored
    private int helperQueued;

    /// <summary>A splitter whose helper has its own accumulator scratch of <paramref name="accumulators"/> ints.</summary>
    public ImageSplitter(int accumulators) => helperAccumulators = new int[Math.Max(1, accumulators)];

    /// <summary>Starts an image: offers a helper to the thread pool unless one is still around.</summary>
    public void Begin()
    {
        Volatile.Write(ref active, 1);
        if (Interlocked.CompareExchange(ref helperQueued, 1, 0) == 0)
        {
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }
    }

    /// <summary>Ends the image; the helper returns to the pool.</summary>
    public void End() => Volatile.Write(ref active, 0);

    /// <summary>Runs both halves of <paramref name="split"/> from its prepared <paramref name="prepared"/> source.</summary>
    public void Run(PackedStep split, ulong[] prepared, ulong[] into, int[] accumulators)
    {
        step = split;
        source = prepared;
        output = into;
        long generation = published + 1;
        Volatile.Write(ref published, generation); // the fields above are visible to whoever reads this generation
        split.RunPart(prepared, into, accumulators, 0, Parts);
        if (Interlocked.CompareExchange(ref claimed, generation, generation - 1) == generation - 1)
        {
            split.RunPart(prepared, into, accumulators, 1, Parts);
            return;
        }
        while (Volatile.Read(ref completed) != generation)
        {
            Thread.SpinWait(1);
        }
        if (helperFailure is { } failure)
        {
            helperFailure = null;
            throw new InvalidOperationException("the helper thread failed on its half of a step", failure);
        }
    }

    void IThreadPoolWorkItem.Execute()
    {
        do
        {
            while (Volatile.Read(ref active) == 1)
            {
                long generation = Volatile.Read(ref published);
                if (Volatile.Read(ref claimed) != generation
                    && Interlocked.CompareExchange(ref claimed, generation, generation - 1) == generation - 1)
                {
                    try
                    {
                        step!.RunPart(source, output, helperAccumulators, 1, Parts);
                    }
                    catch (Exception e)
                    {
                        helperFailure = e;
                    }
                    Volatile.Write(ref completed, generation);
                    continue;
                }
                Thread.SpinWait(1);
            }
            Volatile.Write(ref helperQueued, 0);
            // An image that began after the loop's last look found a helper queued and queued none: stay for it.
        }
        while (Volatile.Read(ref active) == 1 && Interlocked.CompareExchange(ref helperQueued, 1, 0) == 0);
    }
}
