using System.CommandLine;
using Bnn.Sharing;

namespace Bnn.Cli;

internal static class AnalyzeCommand
{
    public static Command Create(CliIo io)
    {
        var model = CommonOptions.Model();
        var json = CommonOptions.Json();
        var command = new Command("analyze", "Decompose conv layers into 2-D filters: classes, repeats, inverses, distances and the cost of each lossless sharing mode")
        {
            model, json,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            var path = parse.GetValue(model)!;
            var m = CommonOptions.LoadModel(path);
            var report = SharingReport.Build(m);
            io.Out.Write(SharingOutput.RenderTable(report));
            if (parse.GetValue(json) is string jsonPath)
            {
                CommonOptions.WriteJson(jsonPath, w => SharingOutput.WriteJson(w, path, report, null));
            }
            return BnnApp.Ok;
        }));
        return command;
    }
}
