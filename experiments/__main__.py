"""Experiments of the conflicting-bundles papers.

Usage: python -m experiments COMMAND [--flagfile=flags/X.cfg] [--flag=value ...]

Every command writes a run directory (runs/<name>/: flags.json, metrics.csv,
results.json, ...); rerunning the same command resumes it. `python -m
experiments COMMAND --helpfull` documents every flag of COMMAND.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile

from absl import app, flags

import experiments

# Start-up lines TensorFlow's C++ code prints whatever TF_CPP_MIN_LOG_LEVEL
# says; oneDNN is on by our default (experiments/__init__.py); the failed CUDA
# initialisation only matters on a machine with an NVIDIA GPU.
_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cpu_feature_guard\.cc"
    r"|oneDNN custom operations are on"
    r"|^To enable the following instructions|Unable to register cu\w+ factory"
    + ("" if os.path.exists("/dev/nvidiactl") else r"|failed call to cuInit"))

# Command name -> (module under experiments/, one-line description).
# A new command is a module with its flags at its top, `read_flags()` and
# `main(argv)` handing its work to `experiments.runtime.command`; add one line here.
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
    "compare": ("experiments.compare",
                "auto_tune vs fixed depths vs Keras Tuner: accuracy, cost, several seeds"),
    "depth_prune": ("experiments.depth_prune",
                    "depth pruning of a ViT and a ResNet: conflicts vs ShortGPT, angular, last"),
}


# The Keras backends the commands run on (docs/experiments.md#on-jax). cb_keras
# itself runs on every backend of `cb_keras._backend`; the commands' placement
# (tf.distribute or keras.distribution) exists on these two.
BACKENDS = ("tensorflow", "jax")


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
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend not in BACKENDS:
        return _message(command, f"error: the experiment commands need KERAS_BACKEND="
                                 f"{' or '.join(BACKENDS)}, not {backend!r} (cb_keras's "
                                 "measure, callback and pruning work on every backend).", 2)
    if _start_keras_quietly() == "tensorflow":
        experiments.configure_tensorflow()
    module = importlib.import_module(COMMANDS[command][0])
    flags.adopt_module_key_flags(module)  # --helpshort shows the command's flags
    app.run(_messages_without_traceback(command, module.main),
            argv=[f"{argv[0]} {command}"] + argv[2:])
    return 0


def _start_keras_quietly() -> str:
    """Import Keras and start its backend, printing its start-up lines but the noise.

    Returns the backend's name. On TensorFlow this imports TensorFlow and
    finds its devices; its C++ code writes to file descriptor 2 directly,
    so that is redirected to a temporary file meanwhile, and lines not
    matching `_STARTUP_NOISE` are printed to stderr afterwards.
    TF_CPP_MIN_LOG_LEVEL=0 shows every line. Other backends never import
    TensorFlow.
    """
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        return _start_keras()
    with tempfile.TemporaryFile() as captured:
        stderr = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            backend = _start_keras()
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
        captured.seek(0)
        lines = captured.read().decode(errors="replace").splitlines(keepends=True)
    sys.stderr.writelines(line for line in lines if not _STARTUP_NOISE.search(line))
    return backend


def _start_keras() -> str:
    """Import Keras and start its backend; the backend's name.

    On TensorFlow, finds TensorFlow's devices. On any other backend, marks
    TensorFlow as not importable for this process (``None`` in
    `sys.modules`): no command needs it there (docs/experiments.md, On
    JAX), and Keras would otherwise import it wherever it is installed, e.g.
    in ``keras.utils.set_random_seed`` only to seed it.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        tf.config.list_physical_devices()
    else:
        sys.modules.setdefault("tensorflow", None)
    return backend


def _messages_without_traceback(command: str, command_main):
    """`command_main`, printing the errors a user can fix as their message alone.

    A flag combination the command refuses (`app.UsageError`, which absl's
    `app.run` would answer with the whole flag help), a `CommandError` (e.g.
    a run directory that cannot be used) or a missing TFDS data set prints
    just its message and exits with status 1; Ctrl-C says how to resume and
    exits with status 130; a full disk says which file did not fit (status 1). A flag
    absl cannot parse stays absl's two lines.
    """
    from cb_keras.paper.data import DatasetNotPreparedError
    from experiments.runtime.console import CommandError

    def run(argv: list[str]) -> None:
        try:
            command_main(argv)
        except app.UsageError as error:
            sys.exit(_message(command, f"error: {error} (--helpshort lists the flags)", 1))
        except (CommandError, DatasetNotPreparedError) as error:
            sys.exit(_message(command, f"error: {error}", 1))
        except Exception as error:
            where = _disk_full_file(error)
            if where is None:
                raise
            sys.exit(_message(command, f"error: no space left on device while writing "
                                       f"{where}; free space and rerun the same command to "
                                       "resume.", 1))
        except KeyboardInterrupt:
            sys.exit(_message(command, "interrupted; rerun the same command to resume.", 130))
    return run


def _disk_full_file(error: BaseException) -> str | None:
    """The file a write that ran out of disk space was writing, or None for other errors.

    `cb_keras.files` raises OSErrors that name the file; TensorFlow's own
    writers (TensorBoard events, SavedModel) say "No space left on device".
    """
    from cb_keras import files

    if isinstance(error, OSError) and error.errno in files.DISK_FULL:
        return str(error.filename or "a file")
    if "No space left on device" in str(error):
        named = re.search(r"(/[^\s,;:'\"]+)", str(error))
        return named.group(1) if named else "a file"
    return None


def _message(command: str, text: str, status: int) -> int:
    """Print ``<command>: <text>`` to stderr; returns `status`."""
    print(f"{command}: {text}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
