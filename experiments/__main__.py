"""Experiments of the conflicting-bundles papers.

Usage: python -m experiments COMMAND [--flagfile=flags/X.cfg] [--flag=value ...]

Every command writes a run directory (runs/<name>/: flags.json, metrics.csv,
results.json, ...); rerunning the same command resumes it. `python -m
experiments COMMAND --helpfull` documents every flag of COMMAND.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags

# TensorFlow's C++ INFO and WARNING lines (oneDNN, CUDA probing, XLA) print
# before absl's logging is set up; set TF_CPP_MIN_LOG_LEVEL=0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Command name -> (module under experiments/, one-line description).
# A new command is a module with key flags at its top and `main(argv)`;
# add one line here.
COMMANDS = {
    "train": ("experiments.train",
              "train fnn/vgg/resnet nets, bundle metrics of a^L every epoch"),
    "evaluate": ("experiments.evaluate",
                 "recompute per-layer conflicts and test accuracy of a finished run"),
    "fnn_map": ("experiments.fnn_map",
                "grid of FNN widths x depths: test accuracy heat map, conflict boundary"),
    "lesion": ("experiments.lesion",
               "lesion study: remove random conflicting / other blocks of a trained resnet"),
    "prune": ("experiments.prune",
              "remove the conflicting blocks of a trained resnet, export the smaller net"),
    "auto_tune": ("experiments.auto_tune",
                  "architecture search: shrink a deep net at its conflicting blocks, restart"),
}


def command_list() -> str:
    """The usage text with one line per command."""
    lines = [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    return __doc__.strip() + "\n\nCommands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Dispatch `argv[1]` to its command module under absl's `app.run`."""
    if len(argv) < 2 or argv[1] in ("-h", "--help", "--helpshort", "--helpfull", "help"):
        print(command_list())
        return 0
    command = argv[1]
    if command not in COMMANDS:
        print(f"Unknown command {command!r}.\n\n{command_list()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    flags.adopt_module_key_flags(module)  # --helpshort shows the command's flags
    app.run(_without_traceback_for_missing_data(module.main),
            argv=[f"{argv[0]} {command}"] + argv[2:])
    return 0


def _without_traceback_for_missing_data(command_main):
    """`command_main`, turning a missing TFDS data set into a usage error (message, exit 1)."""
    from cb_keras.data import DatasetNotPreparedError

    def run(argv: list[str]) -> None:
        try:
            command_main(argv)
        except DatasetNotPreparedError as error:
            raise app.UsageError(str(error)) from error
    return run


if __name__ == "__main__":
    sys.exit(main(sys.argv))
