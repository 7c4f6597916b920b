"""The one error type for user mistakes, which the `fipo-trl` command reports as a single line."""


class UsageError(ValueError):
    """
    A mistake in what the user gave: a recipe field, a flag, a file that is missing, data without the needed columns.

    `fipo-trl` catches it for every subcommand and prints `fipo-trl <command>: error: <message>` (exit status 2, no
    traceback), so the message must say what is wrong and how to fix it, naming the field or flag.
    """
