using System.Net;
using System.Security.Cryptography;
using Bnn.Data;

namespace Bnn.Tests.Cli;

/// <summary>Downloads against a server on 127.0.0.1 serving generated files; nothing touches the internet.</summary>
public sealed class DownloadTests
{
    [Fact]
    public async Task Download_MatchingChecksum_WritesFileAndReportsProgress()
    {
        var content = new byte[300_000];
        new Random(1).NextBytes(content);
        using var server = new LocalServer(new Dictionary<string, byte[]> { ["train_32x32.mat"] = content });
        using var dir = new TempDirectory();
        var source = new DatasetSource("svhn", server.BaseUri, [new RemoteFile("train_32x32.mat", Convert.ToHexStringLower(MD5.HashData(content)))]);
        var reports = new List<DownloadProgress>();
        using var http = new HttpClient();

        var files = await Downloader.DownloadAsync(source, dir.Path, http, new Bnn.Cli.ActionProgress<DownloadProgress>(reports.Add));

        Assert.Equal(content, await File.ReadAllBytesAsync(Assert.Single(files)));
        Assert.Equal(content.Length, reports[^1].Bytes);
        Assert.Equal(content.Length, reports[^1].Total);
    }

    [Fact]
    public void DownloadCommand_ChecksumMismatch_ExitsWith2AndLeavesNoFile()
    {
        // The mirror serves a file that is not the official one, so the published MD5 cannot match.
        using var server = new LocalServer(new Dictionary<string, byte[]> { ["cifar-10-binary.tar.gz"] = new byte[1000] });
        using var dir = new TempDirectory();
        var (code, _, err) = CliRunner.Run("download", "cifar10", "--to", dir.Path, "--mirror", server.BaseUri.ToString());
        Assert.Equal(2, code);
        Assert.Contains("does not match the published c32a1d4ab5d03f1284b67883e8d87530", err);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void DownloadCommand_MissingFile_ExitsWith2()
    {
        using var server = new LocalServer([]);
        using var dir = new TempDirectory();
        var (code, _, err) = CliRunner.Run("download", "svhn", "--to", dir.Path, "--mirror", server.BaseUri.ToString());
        Assert.Equal(2, code);
        Assert.Contains("HTTP 404", err);
    }

    private sealed class LocalServer : IDisposable
    {
        private readonly HttpListener listener = new();
        private readonly Task loop;

        public LocalServer(Dictionary<string, byte[]> files)
        {
            int port = FreePort();
            BaseUri = new Uri($"http://127.0.0.1:{port}/");
            listener.Prefixes.Add(BaseUri.ToString());
            listener.Start();
            loop = Task.Run(async () =>
            {
                while (listener.IsListening)
                {
                    HttpListenerContext ctx;
                    try
                    {
                        ctx = await listener.GetContextAsync();
                    }
                    catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
                    {
                        return;
                    }
                    var name = ctx.Request.Url!.AbsolutePath.TrimStart('/');
                    if (files.TryGetValue(name, out var body))
                    {
                        ctx.Response.ContentLength64 = body.Length;
                        await ctx.Response.OutputStream.WriteAsync(body);
                    }
                    else
                    {
                        ctx.Response.StatusCode = 404;
                    }
                    ctx.Response.Close();
                }
            });
        }

        public Uri BaseUri { get; }

        public void Dispose()
        {
            listener.Stop();
            listener.Close();
            loop.Wait(TimeSpan.FromSeconds(5));
        }

        private static int FreePort()
        {
            var l = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
            l.Start();
            int port = ((IPEndPoint)l.LocalEndpoint).Port;
            l.Stop();
            return port;
        }
    }
}
