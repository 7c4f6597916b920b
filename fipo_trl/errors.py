"""The one error type for user mistakes, which the `fipo-trl` command reports as a single line."""


class UsageError(ValueError):
    """
    A mistake in what the user gave: a recipe field, a flag, a file that is missing, data without the needed columns.

    `fipo-trl` catches it for every subcommand and prints `fipo-trl <command>: error: <message>` (exit status 2, no
    traceback), so the message must say what is wrong and how to fix it, naming the field or flag.
    """


class Preempted(KeyboardInterrupt):
    """
    A run stopped by SIGTERM, how Slurm and other schedulers end a job (preemption, time limit, `scancel`).

    `fipo-trl` prints `fipo-trl <command>: <message>` (where the run stopped, its last checkpoint and the command
    that resumes it) and exits with status 143 (128 + SIGTERM), as a process ended by SIGTERM does.
    """
