"""The error types `fipo-trl` reports as one line, each with its own exit status (docs/troubleshooting.md)."""


class UsageError(ValueError):
    """
    A mistake in what the user gave: a recipe field, a flag, a file that is missing, data without the needed columns.

    Found before the model loads. `fipo-trl` catches it for every subcommand and prints `fipo-trl <command>: error:
    <message>` (exit status 2, no traceback), so the message must say what is wrong and how to fix it, naming the
    field or flag.
    """


class TrainingError(RuntimeError):
    """
    A run that failed during training: a reward that raised or gave no signal, dynamic sampling that ran out of rounds.

    `fipo-trl train` prints `fipo-trl train: failed: <message> (at step N; last checkpoint: ...; resume with: ...)`
    and exits with status 3; the message says what went wrong and what to change. `after_step` is set by a check
    that runs once a step has finished (a callback), so that the line says "after step N" rather than "at step N+1".
    """

    def __init__(self, message: str, after_step: int | None = None):
        super().__init__(message)
        self.after_step = after_step


class Preempted(KeyboardInterrupt):
    """
    A run stopped by SIGTERM, how Slurm and other schedulers end a job (preemption, time limit, `scancel`).

    `fipo-trl` prints `fipo-trl <command>: <message>` (where the run stopped, its last checkpoint and the command
    that resumes it) and exits with status 143 (128 + SIGTERM), as a process ended by SIGTERM does.
    """
