using System.CommandLine;
using System.Reflection;
using Bnn.Data;

namespace Bnn.Cli;

/// <summary>A usage error detected after parsing (exit code 1).</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// The <c>bnn</c> command line. Runs in-process against any pair of writers so that tests can drive it.
/// Exit codes: 0 success, 1 usage error, 2 bad input data or a bad model.
/// </summary>
public static class BnnApp
{
    /// <summary>Exit code for success.</summary>
    public const int Ok = 0;

    /// <summary>Exit code for a usage error.</summary>
    public const int UsageError = 1;

    /// <summary>Exit code for bad input data or a bad model.</summary>
    public const int DataError = 2;

    /// <summary>
    /// This build's version and the commit it was built from ("1.0.0+sha"), as <c>bnn --version</c> prints it; a training
    /// log opens with it, so that a run that spans sessions says which code trained each part.
    /// </summary>
    public static string Version =>
        typeof(BnnApp).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";

    /// <summary>Parses and runs one command line.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = new RootCommand("bnn: binarized neural networks with convolution result sharing");
        var io = new CliIo(stdout, stderr);
        foreach (var command in Commands(io))
        {
            root.Add(command);
        }
        var parse = root.Parse(args);
        return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
    }

    private static IEnumerable<Command> Commands(CliIo io) =>
    [
        TrainCommand.Create(io),
        EvalCommand.Create(io),
        InfoCommand.Create(io),
        RandomModelCommand.Create(io),
        DownloadCommand.Create(io),
        AnalyzeCommand.Create(io),
        ShareCommand.Create(io),
        CheckpointCommands.Info(io),
        CheckpointCommands.Export(io),
        CheckpointCommands.Pack(io),
        CheckpointCommands.Average(io),
        CheckpointCommands.Fidelity(io),
        ReproduceCommand.Create(io),
        ReportCommand.Create(io),
        OnnxCommands.Import(io),
        OnnxCommands.Export(io),
        OnnxCommands.Check(io),
        BenchCommand.Create(io),
    ];

    /// <summary>Wraps a command body with the exit-code policy: clear one-line errors, no stack traces.</summary>
    internal static int Guard(CliIo io, Func<int> body)
    {
        try
        {
            return body();
        }
        catch (UsageException e)
        {
            io.Err.WriteLine($"error: {e.Message}");
            return UsageError;
        }
        catch (BnnDataException e)
        {
            io.Err.WriteLine($"error: {e.Message}");
            return DataError;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            io.Err.WriteLine($"error: {e.Message}");
            return DataError;
        }
    }
}

/// <summary>The writers a command prints to, and whether a live progress bar makes sense on them.</summary>
internal sealed class CliIo(TextWriter output, TextWriter error)
{
    public TextWriter Out { get; } = output;

    public TextWriter Err { get; } = error;

    public bool Interactive => ReferenceEquals(Out, Console.Out) && !Console.IsOutputRedirected;
}
