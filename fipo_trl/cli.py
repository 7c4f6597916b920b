"""The `fipo-trl` command: `train`, `check` and `eval`, each a thin dispatcher to the module that owns it."""

import importlib
import sys


COMMANDS = {
    "train": ("fipo_trl.train", "train FIPO from a YAML recipe (TrlParser: script args, FIPOConfig, ModelConfig)"),
    "check": ("fipo_trl.check", "print the batch geometry a recipe implies, without loading a model"),
    "eval": ("fipo_trl.evaluate", "Avg@k / Cons@k / Pass@k of a model on a math dataset"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<6} {help_text}" for name, (_, help_text) in COMMANDS.items()]
        print("usage: fipo-trl {" + ",".join(COMMANDS) + "} ...\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
