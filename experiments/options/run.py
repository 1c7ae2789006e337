"""--runs_root, --name, --run_dir: where a command's run directory is (every command)."""

from __future__ import annotations

from absl import flags

from experiments.runtime import rundir
from experiments.runtime.config import RunConfig

RUNS_ROOT = flags.DEFINE_string(
    "runs_root", "runs", "Folder that holds the run directories (<runs_root>/<name>).")
NAME = flags.DEFINE_string(
    "name", None,
    "Name of the run directory under --runs_root. Default: derived from the command and "
    "the flags that affect results (readable prefix + hash), so rerunning the same "
    "command resumes the same run and a changed flag starts a new one.")
RUN_DIR = flags.DEFINE_string(
    "run_dir", None, "Path of the run directory; overrides --runs_root and --name.")
rundir.operational(RUNS_ROOT, NAME, RUN_DIR)


def run_config(command: str, module_name: str) -> RunConfig:
    """The run location given by the flags, with the key flags of `module_name`.

    Args:
        command: the command's name.
        module_name: the command module, whose key flags (its own and the
            adopted ones) are the run's flags.
    """
    values = {flag.name: flag.value for flag in sorted(
        flags.FLAGS.get_key_flags_for_module(module_name), key=lambda f: f.name)}
    return RunConfig(command=command, flag_values=values, runs_root=RUNS_ROOT.value,
                     name=NAME.value, run_dir=RUN_DIR.value)
