using System.Runtime.CompilerServices;

namespace Bnn.Tests;

/// <summary>
/// Minimal snapshot testing: compares text with <c>Expectations/NAME.verified.txt</c> beside the tests. On a
/// mismatch or a missing file it writes <c>NAME.received.txt</c> there and fails; accept a change by renaming it.
/// </summary>
internal static class Snapshot
{
    public static void Match(string actual, string name, [CallerFilePath] string callerPath = "")
    {
        var dir = Path.Combine(FindTestsRoot(callerPath), "Expectations");
        var verified = Path.Combine(dir, name + ".verified.txt");
        var received = Path.Combine(dir, name + ".received.txt");
        actual = actual.Replace("\r\n", "\n", StringComparison.Ordinal);
        if (File.Exists(verified) && File.ReadAllText(verified).Replace("\r\n", "\n", StringComparison.Ordinal) == actual)
        {
            File.Delete(received);
            return;
        }
        Directory.CreateDirectory(dir);
        File.WriteAllText(received, actual);
        Assert.Fail($"snapshot {name} differs from {verified} (or is missing); see {received}");
    }

    private static string FindTestsRoot(string callerPath)
    {
        var dir = Path.GetDirectoryName(callerPath);
        while (dir is not null && !File.Exists(Path.Combine(dir, "Bnn.Tests.csproj")))
        {
            dir = Path.GetDirectoryName(dir);
        }
        return dir ?? throw new InvalidOperationException("tests root not found");
    }
}
