// Why this exists: TorchSharp 0.107.0's libLibTorchSharp.so was linked against a libstdc++ that exports
// GLIBCXX_3.4.32, and it records that version as a hard requirement. Debian 12 ships libstdc++ with
// GLIBCXX_3.4.30, so dlopen fails and TorchSharp reports a misleading "no reference to libtorch-cpu-linux-x64"
// error. The only symbol bound to that version is std::ios_base_library_init, which no relocation references
// (it is never called). We therefore mark that one version requirement VER_FLG_WEAK in a *copy* of the library
// in the build output: glibc's loader then accepts its absence, and every other version check stays in force.
// Nothing is changed when the system libstdc++ already provides the version.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public sealed class WeakenGlibcxxRequirement : Task
{
    private const string Version = "GLIBCXX_3.4.32";
    private const ushort VerFlagWeak = 0x2;
    private const uint ShtGnuVerneed = 0x6ffffffe;

    [Required]
    public string Directory { get; set; } = "";

    public override bool Execute()
    {
        if (!System.IO.Directory.Exists(Directory) || SystemProvidesVersion())
        {
            return true;
        }
        foreach (var path in System.IO.Directory.EnumerateFiles(Directory, "libLibTorchSharp.so", SearchOption.AllDirectories))
        {
            var bytes = File.ReadAllBytes(path);
            if (Patch(bytes))
            {
                File.WriteAllBytes(path, bytes);
                Log.LogMessage(MessageImportance.High, $"Marked {Version} requirement weak in {path} (system libstdc++ lacks it)");
            }
        }
        return !Log.HasLoggedErrors;
    }

    private static bool SystemProvidesVersion()
    {
        foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib" })
        {
            var lib = Path.Combine(dir, "libstdc++.so.6");
            if (File.Exists(lib))
            {
                var text = Encoding.ASCII.GetString(File.ReadAllBytes(lib));
                return text.IndexOf(Version + "\0", StringComparison.Ordinal) >= 0;
            }
        }
        return false;
    }

    // Walks the ELF64 little-endian section headers to SHT_GNU_verneed and sets the weak flag on the matching
    // Vernaux entry. Returns whether anything changed (idempotent: an already weak entry is left alone).
    private static bool Patch(byte[] b)
    {
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[4] != 2 || b[5] != 1)
        {
            return false;
        }
        long shoff = BitConverter.ToInt64(b, 0x28);
        int shentsize = BitConverter.ToUInt16(b, 0x3A);
        int shnum = BitConverter.ToUInt16(b, 0x3C);
        bool changed = false;
        for (int i = 0; i < shnum; i++)
        {
            long sh = shoff + (long)i * shentsize;
            if (BitConverter.ToUInt32(b, (int)sh + 4) != ShtGnuVerneed)
            {
                continue;
            }
            long offset = BitConverter.ToInt64(b, (int)sh + 0x18);
            int link = BitConverter.ToInt32(b, (int)sh + 0x28);
            long strtab = BitConverter.ToInt64(b, (int)(shoff + (long)link * shentsize + 0x18));
            long vn = offset;
            while (true)
            {
                int count = BitConverter.ToUInt16(b, (int)vn + 2);
                long aux = vn + BitConverter.ToUInt32(b, (int)vn + 8);
                for (int a = 0; a < count; a++)
                {
                    long name = strtab + BitConverter.ToUInt32(b, (int)aux + 8);
                    int end = Array.IndexOf(b, (byte)0, (int)name);
                    if (Encoding.ASCII.GetString(b, (int)name, end - (int)name) == Version)
                    {
                        ushort flags = BitConverter.ToUInt16(b, (int)aux + 4);
                        if ((flags & VerFlagWeak) == 0)
                        {
                            BitConverter.GetBytes((ushort)(flags | VerFlagWeak)).CopyTo(b, (int)aux + 4);
                            changed = true;
                        }
                    }
                    aux += BitConverter.ToUInt32(b, (int)aux + 12);
                }
                uint next = BitConverter.ToUInt32(b, (int)vn + 12);
                if (next == 0)
                {
                    break;
                }
                vn += next;
            }
        }
        return changed;
    }
}
