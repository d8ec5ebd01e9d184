using System.CommandLine;
using Bnn.Data;
using Spectre.Console;

namespace Bnn.Cli;

internal static class DownloadCommand
{
    public static Command Create(CliIo io)
    {
        var dataset = new Argument<string>("dataset") { Description = "cifar10 or svhn" }.AcceptOnlyFromAmong([.. Datasets.Names]);
        var to = new Option<string>("--to") { Description = "directory to write the files into", Required = true };
        var mirror = new Option<string?>("--mirror") { Description = "base URL to fetch from instead of the official site (checksums still apply)" };
        var command = new Command("download", "Fetch a dataset's official files and verify their published MD5 sums") { dataset, to, mirror };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var source = Downloader.Official(parse.GetValue(dataset)!);
            if (parse.GetValue(mirror) is string m)
            {
                if (!Uri.TryCreate(m.EndsWith('/') ? m : m + "/", UriKind.Absolute, out var baseUri))
                {
                    throw new UsageException($"--mirror: '{m}' is not an absolute URL");
                }
                source = source with { BaseUri = baseUri };
            }
            var files = Run(io, source, parse.GetValue(to)!);
            foreach (var f in files)
            {
                io.Out.WriteLine($"ok {f}");
            }
            return BnnApp.Ok;
        }));
        return command;
    }

    private static IReadOnlyList<string> Run(CliIo io, DatasetSource source, string directory)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(30) };
        if (!io.Interactive)
        {
            return Downloader.DownloadAsync(source, directory, http).GetAwaiter().GetResult();
        }
        IReadOnlyList<string> result = [];
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var tasks = source.Files.ToDictionary(f => f.Name, f => ctx.AddTask(f.Name, autoStart: false));
                result = Downloader.DownloadAsync(source, directory, http, new ActionProgress<DownloadProgress>(p =>
                {
                    var task = tasks[p.File];
                    task.StartTask();
                    if (p.Total is long total)
                    {
                        task.MaxValue = total;
                    }
                    task.Value = p.Bytes;
                })).GetAwaiter().GetResult();
            });
        return result;
    }
}
