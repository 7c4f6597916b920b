"""The `fipo-trl` command: `train`, `check` and `eval`, each a thin dispatcher to the module that owns it.

Every subcommand reports its errors here, each kind as one line on stderr with its own exit status (the table of
docs/troubleshooting.md): a user mistake ([`~fipo_trl.errors.UsageError`]) as `fipo-trl <command>: error: <message>`,
status 2; a failure during training ([`~fipo_trl.errors.TrainingError`]) as `fipo-trl train: failed: <message>`,
status 3; Ctrl-C as `fipo-trl <command>: interrupted ...`, status 130; SIGTERM (a scheduler's preemption or time
limit) as `fipo-trl train: stopped by SIGTERM ...`, status 143. With `FIPO_TRL_DEBUG=1` in the environment an error
prints its full traceback, chained causes included, instead of the one line.
"""

import argparse
import importlib
import os
import sys
import traceback

from ..errors import Preempted, TrainingError, UsageError


COMMANDS = {  # name: (module, entry function, help)
    "train": ("fipo_trl.cli.train", "cli", "train FIPO: fipo-trl train RECIPE.yaml [--field value ...]"),
    "check": ("fipo_trl.cli.check", "cli", "print the batch geometry a recipe implies, without loading a model"),
    "eval": ("fipo_trl.cli.eval", "cli", "Avg@k / Cons@k / Pass@k of a model on a math dataset"),
}
USAGE_ERROR_STATUS = 2  # argparse's status for a bad command line
TRAINING_ERROR_STATUS = 3  # a run that started and failed: not the user's input, not an interruption
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
# 128 + SIGTERM, what a shell reports for a process that SIGTERM ended: Slurm requeues a preempted job whatever the
# status (PreemptMode=REQUEUE); the shipped sbatch script requeues itself on it (docs/cluster-jobs.md)
PREEMPTED_STATUS = 143


class RaisingArgumentParser(argparse.ArgumentParser):
    """
    An `argparse.ArgumentParser` whose errors raise [`UsageError`]: argparse prints its usage and exits on a bad flag,
    and every command reports one line. `fipo-trl check` uses it, `fipo-trl eval` mixes it into `HfArgumentParser`.
    """

    def error(self, message):
        raise UsageError(message)


def usage() -> str:
    lines = [f"  {name:<6} {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    return "usage: fipo-trl {" + ",".join(COMMANDS) + "} ...\n\ncommands:\n" + "\n".join(lines)


def use_one_cpu_thread_per_process():
    """
    Default `OMP_NUM_THREADS` to 1 (torch's CPU thread count) when the user has not set it, before torch is imported.
    Only `train` does (see `main`).

    torch otherwise starts one OpenMP thread per core, and when other processes keep the cores busy its threads wait
    on each other at every small op: the quickstart trained 5-10x slower with 2 threads than with 1 on 2 busy cores
    (`docs/quickstart.md`, CPU threads). torchrun and `accelerate launch` also give each worker one thread by default.
    `eval` keeps torch's default, so that a CPU evaluation uses every core of an idle machine; on busy cores it stalls
    in the same way (`python benchmarks/cpu_threads.py --command eval`), and `OMP_NUM_THREADS=1 fipo-trl eval ...`
    avoids it.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv=None) -> int:
    """Entry point of the `fipo-trl` console script; returns the exit status."""
    try:
        status = run_command(argv)
        sys.stdout.flush()  # here, so that a closed pipe is seen here and not at the interpreter's exit
        return status
    except BrokenPipeError:
        # the reader closed the pipe (`fipo-trl train --help | head`): it had what it wanted. Python's documented
        # way out: stdout to devnull, so that the flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def run_command(argv=None) -> int:
    """The subcommand of `argv`, its errors reported as one line each (the table of docs/troubleshooting.md)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else USAGE_ERROR_STATUS
    command, *args = argv
    if command not in COMMANDS:
        print(f"fipo-trl: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return USAGE_ERROR_STATUS
    if command == "train":  # CPU training is the tiny quickstart's: one thread loses little idle, a lot on busy cores
        use_one_cpu_thread_per_process()
    module_name, function_name, _ = COMMANDS[command]
    entry = getattr(importlib.import_module(module_name), function_name)
    try:
        return entry(args)
    except UsageError as error:
        report(f"fipo-trl {command}: error: {error}", error)
        return USAGE_ERROR_STATUS
    except TrainingError as error:
        report(f"fipo-trl {command}: failed: {error}", error)
        return TRAINING_ERROR_STATUS
    except Preempted as preempted:  # SIGTERM from a scheduler: where it stopped and how the requeued job goes on
        if int(os.environ.get("RANK", "0")) == 0:  # every process of the run stops; the main one says where
            print(f"fipo-trl {command}: {preempted}", file=sys.stderr)
        return PREEMPTED_STATUS
    except KeyboardInterrupt as interrupt:
        # Ctrl-C is how a user stops a run, not a crash: one line (where it stopped, how to go on), no traceback
        print(f"fipo-trl {command}: interrupted" + (f" {interrupt}" if str(interrupt) else ""), file=sys.stderr)
        return INTERRUPTED_STATUS


def debug_enabled() -> bool:
    """Whether `FIPO_TRL_DEBUG` asks for full tracebacks (any value but empty, `0` or `false`)."""
    return os.environ.get("FIPO_TRL_DEBUG", "").strip().lower() not in ("", "0", "false")


def report(line: str, error: BaseException) -> None:
    """Print `line` on stderr, or with `FIPO_TRL_DEBUG=1` the traceback of `error` and of every cause it chains."""
    if debug_enabled():
        traceback.print_exception(error, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
