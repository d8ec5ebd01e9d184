using Bnn.Cli;

namespace Bnn.Tests.Cli;

/// <summary>Runs the bnn command line in-process and captures its output.</summary>
internal static class CliRunner
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = BnnApp.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
