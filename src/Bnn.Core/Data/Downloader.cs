using System.Security.Cryptography;

namespace Bnn.Data;

/// <summary>A file to fetch and the MD5 its publisher lists for it.</summary>
public sealed record RemoteFile(string Name, string Md5);

/// <summary>Where a dataset's official files live.</summary>
public sealed record DatasetSource(string Dataset, Uri BaseUri, IReadOnlyList<RemoteFile> Files);

/// <summary>Progress of one file download.</summary>
public sealed record DownloadProgress(string File, long Bytes, long? Total);

/// <summary>
/// Fetches official dataset files and verifies their published MD5 sums. Each file is written to
/// <c>NAME.part</c> and renamed only after its checksum matches, so a failed or interrupted download never leaves a
/// file that looks complete. A file already present with the right checksum is not fetched again.
/// </summary>
public static class Downloader
{
    /// <summary>The official sources and checksums.</summary>
    public static DatasetSource Official(string dataset) => dataset switch
    {
        "cifar10" => new("cifar10", new Uri("https://www.cs.toronto.edu/~kriz/"),
            [new RemoteFile("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")]),
        "svhn" => new("svhn", new Uri("http://ufldl.stanford.edu/housenumbers/"),
        [
            new RemoteFile("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
            new RemoteFile("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
        ]),
        _ => throw new ArgumentException($"unknown dataset '{dataset}' (expected one of: {string.Join(", ", Datasets.Names)})", nameof(dataset)),
    };

    /// <summary>Downloads every file of <paramref name="source"/> into <paramref name="directory"/>.</summary>
    public static async Task<IReadOnlyList<string>> DownloadAsync(DatasetSource source, string directory, HttpClient http,
        IProgress<DownloadProgress>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(http);
        Directory.CreateDirectory(directory);
        var written = new List<string>();
        foreach (var file in source.Files)
        {
            var target = Path.Combine(directory, file.Name);
            if (File.Exists(target) && await Md5Async(target, cancel).ConfigureAwait(false) == file.Md5)
            {
                written.Add(target);
                continue;
            }
            var uri = new Uri(source.BaseUri, file.Name);
            var part = target + ".part";
            try
            {
                using var response = await http.GetAsync(uri, HttpCompletionOption.ResponseHeadersRead, cancel).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode)
                {
                    throw new BnnDataException($"{uri}: HTTP {(int)response.StatusCode} {response.ReasonPhrase}");
                }
                long? total = response.Content.Headers.ContentLength;
                await using (var input = await response.Content.ReadAsStreamAsync(cancel).ConfigureAwait(false))
                await using (var output = File.Create(part))
                {
                    var buffer = new byte[1 << 16];
                    long bytes = 0;
                    int n;
                    while ((n = await input.ReadAsync(buffer, cancel).ConfigureAwait(false)) > 0)
                    {
                        await output.WriteAsync(buffer.AsMemory(0, n), cancel).ConfigureAwait(false);
                        bytes += n;
                        progress?.Report(new DownloadProgress(file.Name, bytes, total));
                    }
                }
            }
            catch (HttpRequestException e)
            {
                File.Delete(part);
                throw new BnnDataException($"{uri}: download failed ({e.Message})", e);
            }
            var md5 = await Md5Async(part, cancel).ConfigureAwait(false);
            if (md5 != file.Md5)
            {
                File.Delete(part);
                throw new BnnDataException($"{uri}: MD5 {md5} does not match the published {file.Md5}; the file was discarded");
            }
            File.Move(part, target, overwrite: true);
            written.Add(target);
        }
        return written;
    }

    /// <summary>The lower-case hex MD5 of a file.</summary>
    public static async Task<string> Md5Async(string path, CancellationToken cancel = default)
    {
        await using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(await MD5.HashDataAsync(stream, cancel).ConfigureAwait(false));
    }
}
