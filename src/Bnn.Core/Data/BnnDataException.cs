namespace Bnn.Data;

/// <summary>
/// Bad input data or a bad model file. The message always names the file and, where it applies, the record or byte
/// offset, so that the command-line tool can print it as is (exit code 2) without a stack trace.
/// </summary>
public sealed class BnnDataException : Exception
{
    /// <summary>Creates the exception with a message that names the file and the place in it.</summary>
    public BnnDataException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and the lower-level cause.</summary>
    public BnnDataException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
