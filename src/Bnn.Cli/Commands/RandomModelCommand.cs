using System.CommandLine;
using Bnn.Model;

namespace Bnn.Cli;

internal static class RandomModelCommand
{
    public static Command Create(CliIo io)
    {
        var arch = new Option<string>("--arch") { Description = "architecture", Required = true }.AcceptOnlyFromAmong([.. Architectures.Names]);
        var width = new Option<double>("--width") { Description = "channel-count multiplier", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<int>("--seed") { Description = "random seed", DefaultValueFactory = _ => 1 };
        var output = new Option<string>("--out") { Description = "model file to write", Required = true };
        var command = new Command("random-model", "Write a seeded, randomly initialized model of an architecture (for demos, tests and benchmarks)")
        {
            arch, width, seed, output,
        };
        command.SetAction(parse => BnnApp.Guard(io, () =>
        {
            if (!(parse.GetValue(width) > 0))
            {
                throw new UsageException("--width must be positive");
            }
            var model = RandomModels.Create(Architectures.Build(parse.GetValue(arch)!, parse.GetValue(width)), new Shape(3, 32, 32), parse.GetValue(seed));
            ModelFile.Save(model, parse.GetValue(output)!);
            io.Out.WriteLine($"wrote {parse.GetValue(output)}");
            return BnnApp.Ok;
        }));
        return command;
    }
}
