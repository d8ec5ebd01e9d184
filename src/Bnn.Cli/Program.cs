return Bnn.Cli.BnnApp.Run(args, Console.Out, Console.Error);
