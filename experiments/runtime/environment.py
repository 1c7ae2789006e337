"""The process settings that change a run's numbers, recorded in its environment.json.

Two processes given the same flags compute the same numbers only under
the same settings: oneDNN's CPU kernels and Grappler's fused kernels round
differently from TensorFlow's plain ones (`experiments` sets both), and
another Keras backend or library version may too. A new run records them
(`record`); resuming under other settings prints one warning line and goes
on (`compare`): the epochs trained before and after differ in rounding
only, and refusing would strand every unfinished run at a library upgrade.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Mapping

import keras

from experiments.runtime.rundir import RunDir

ENVIRONMENT_FILE = "environment.json"
# Environment variables that change how TensorFlow computes (experiments/__init__.py).
VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "CB_KERAS_GRAPPLER")
# The package of each Keras backend, whose version is recorded.
_BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def current() -> dict[str, str]:
    """This process's settings: Python, Keras backend, versions, and `VARIABLES`."""
    backend = keras.backend.backend()
    packages = ["keras", "numpy", _BACKEND_PACKAGES.get(backend, backend)]
    return {"python": platform.python_version(), "keras_backend": backend,
            **{package: _version(package) for package in packages},
            **{name: os.environ.get(name, "<unset>") for name in VARIABLES}}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "<not installed>"


def record(run: RunDir) -> None:
    """Write this process's settings to the environment.json of a new run."""
    run.write_json(ENVIRONMENT_FILE, current())


def compare(run: RunDir) -> str | None:
    """A warning line if the resumed `run` was started under other settings, else None.

    A run without environment.json (made before this record) gives None.
    """
    saved = run.read_json(ENVIRONMENT_FILE)
    if saved is None:
        return None
    now = current()
    changed = sorted(key for key in set(saved) | set(now) if saved.get(key) != now.get(key))
    if not changed:
        return None
    return (f"warning: {run.path} was started with {_settings(saved, changed)} (now "
            f"{_settings(now, changed)}); the epochs trained from here on may round "
            "differently from an uninterrupted run's.")


def _settings(values: Mapping[str, str], keys: list[str]) -> str:
    return ", ".join(f"{key}={values.get(key, '<unset>')}" for key in keys)
