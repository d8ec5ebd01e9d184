using BenchmarkDotNet.Running;

// dotnet run -c Release --project bench/Bnn.Benchmarks -- --filter '*'   (see bench/RESULTS.md)
BenchmarkSwitcher.FromAssembly(typeof(Bnn.Benchmarks.PopCountBenchmarks).Assembly).Run(args);
