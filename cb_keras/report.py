"""`ConflictReport`: the bundle metrics of the measured layers of one model.

A report holds one `LayerResult` per measured output a^(1)..a^(L) in graph
order, plus what the numbers depend on (num_samples, num_classes,
weight_amplitude, learning_rate, batch_size, and the epoch when a callback
made it). It is a plain frozen value: `to_dict`/`from_dict`, JSON, CSV and a
PNG plot. Every file is written atomically (a temporary file in the same
directory, then renamed over the target), so a crash never leaves half a file.

CSV layout (one row per layer, `CSV_COLUMNS`; several reports, e.g. one per
epoch, stack in one file): ``epoch`` (empty if unknown), ``index`` (l - 1),
``layer``, ``num_bundles`` (empty if diverged), ``bundle_entropy`` (nats,
``nan`` if diverged), ``max_accuracy`` (in [0, 1], ``nan`` if diverged),
``conflicting``, ``diverged`` (0/1), then the report's metadata.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from collections.abc import Iterator
from typing import Any

from cb_keras import files
from cb_keras.files import PathLike

CSV_COLUMNS = ("epoch", "index", "layer", "num_bundles", "bundle_entropy", "max_accuracy",
               "conflicting", "diverged", "num_samples", "num_classes", "weight_amplitude",
               "learning_rate", "batch_size")
_METADATA = ("num_samples", "num_classes", "weight_amplitude", "learning_rate", "batch_size",
             "epoch")


@dataclasses.dataclass(frozen=True)
class LayerResult:
    """Bundle metrics of one measured output a^(l).

    Attributes:
        name: the layer's name (usable in ``layers=[...]``).
        num_bundles: number of bundles (1..N); None if diverged.
        bundle_entropy: bundle entropy in nats (>= 0); NaN if diverged.
        max_accuracy: accuracy bound on the sample, in [0, 1]; NaN if diverged.
        diverged: the outputs held NaN or inf, so bundles are not defined.
    """

    name: str
    num_bundles: int | None
    bundle_entropy: float
    max_accuracy: float
    diverged: bool = False

    @classmethod
    def diverged_layer(cls, name: str) -> LayerResult:
        """The result of a layer whose outputs are not finite."""
        return cls(name, None, math.nan, math.nan, diverged=True)

    @property
    def conflicting(self) -> bool:
        """True iff some bundle mixes classes (bundle_entropy > 0); False if diverged."""
        return self.bundle_entropy > 0.0


@dataclasses.dataclass(frozen=True)
class ConflictReport:
    """Bundle metrics of the measured outputs of a model, a^(1) first.

    Attributes:
        layers: one `LayerResult` per measured output, in graph order.
        num_samples: N, the samples measured.
        num_classes: C.
        weight_amplitude: max |w| over the trainable weights when measured.
        learning_rate: the learning rate used in the transform.
        batch_size: the training batch size used in the transform.
        epoch: the (0-based) epoch after which it was measured, if known.

    Look layers up by name (``report["dense_3"]``) or walk them in order
    (``for layer in report``).
    """

    layers: tuple[LayerResult, ...]
    num_samples: int
    num_classes: int
    weight_amplitude: float
    learning_rate: float
    batch_size: int
    epoch: int | None = None

    def __post_init__(self):
        if not self.layers:
            raise ValueError("a ConflictReport needs at least one layer.")

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerResult]:
        return iter(self.layers)

    def __getitem__(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in this report; available: {self.names}.")

    @property
    def names(self) -> list[str]:
        """Layer names, a^(1) first."""
        return [layer.name for layer in self.layers]

    @property
    def last(self) -> LayerResult:
        """The result of a^(L), the last measured output."""
        return self.layers[-1]

    @property
    def first_conflicting(self) -> str | None:
        """Name of the first conflicting layer, or None."""
        return next(iter(self.conflicting), None)

    @property
    def conflicting(self) -> list[str]:
        """Names of the conflicting layers, in order."""
        return [layer.name for layer in self.layers if layer.conflicting]

    @property
    def diverged(self) -> list[str]:
        """Names of the layers whose outputs held NaN or inf, in order."""
        return [layer.name for layer in self.layers if layer.diverged]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the metadata and ``layers``, a list of per-layer dicts.

        NaN metrics (diverged layers) become None.
        """
        layers = [{**dataclasses.asdict(layer), "conflicting": layer.conflicting,
                   "bundle_entropy": _finite_or_none(layer.bundle_entropy),
                   "max_accuracy": _finite_or_none(layer.max_accuracy)}
                  for layer in self.layers]
        metadata = {key: getattr(self, key) for key in _METADATA}
        metadata["weight_amplitude"] = _finite_or_none(self.weight_amplitude)
        return {**metadata, "layers": layers}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConflictReport:
        """Inverse of `to_dict`."""
        missing = [key for key in _METADATA + ("layers",) if key not in data]
        if missing:
            raise ValueError(f"not a ConflictReport dict: missing keys {missing}.")
        layers = tuple(
            LayerResult(layer["name"], layer["num_bundles"],
                        _none_to_nan(layer["bundle_entropy"]),
                        _none_to_nan(layer["max_accuracy"]), bool(layer["diverged"]))
            for layer in data["layers"])
        metadata = {key: data[key] for key in _METADATA}
        metadata["weight_amplitude"] = _none_to_nan(metadata["weight_amplitude"])
        return cls(layers=layers, **metadata)

    def save_json(self, path: PathLike) -> None:
        """Write `to_dict` as JSON (strict: no NaN literals), atomically."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        files.write_text(path, text)

    @classmethod
    def load_json(cls, path: PathLike) -> ConflictReport:
        """Read a report written by `save_json`."""
        return cls.from_dict(json.loads(pathlib.Path(path).read_text()))

    def save_csv(self, path: PathLike) -> None:
        """Write one CSV row per layer (`CSV_COLUMNS`), atomically."""
        write_csv([self], path)

    def csv_rows(self) -> list[dict[str, Any]]:
        """The CSV rows of this report, one dict per layer keyed by `CSV_COLUMNS`."""
        metadata = {key: getattr(self, key) for key in _METADATA}
        return [{**metadata, "epoch": "" if self.epoch is None else self.epoch,
                 "index": index, "layer": layer.name,
                 "num_bundles": "" if layer.num_bundles is None else layer.num_bundles,
                 "bundle_entropy": repr(layer.bundle_entropy),
                 "max_accuracy": repr(layer.max_accuracy),
                 "conflicting": int(layer.conflicting), "diverged": int(layer.diverged)}
                for index, layer in enumerate(self.layers)]

    def plot(self, path: PathLike, title: str | None = None) -> None:
        """Write a PNG of bundle entropy and number of bundles per layer (headless).

        x axis: the measured layers in order; top panel: bundle entropy
        (conflicting layers in red); bottom: number of bundles (log scale,
        at most N). Diverged layers leave gaps and are named in the title.
        """
        figure = _figure(self, title)
        files.save_png(figure, path)


def write_csv(reports: list[ConflictReport], path: PathLike) -> None:
    """Write the rows of several reports (e.g. one per epoch) to one CSV, atomically."""
    def write(file):
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for report in reports:
            writer.writerows(report.csv_rows())
    files.write_atomically(path, write)


def read_csv(path: PathLike) -> list[ConflictReport]:
    """Read the reports of a CSV written by `write_csv`/`save_csv`, in file order."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or set(CSV_COLUMNS) - set(rows[0]):
        raise ValueError(
            f"{path} is not a ConflictReport CSV: it needs the columns {list(CSV_COLUMNS)}.")
    groups: list[list[dict]] = []
    for row in rows:
        if int(row["index"]) == 0:
            groups.append([])
        groups[-1].append(row)
    return [_report_from_rows(group) for group in groups]


def _report_from_rows(rows: list[dict[str, str]]) -> ConflictReport:
    """One report from its CSV rows (strings)."""
    first = rows[0]
    layers = tuple(
        LayerResult(row["layer"], int(row["num_bundles"]) if row["num_bundles"] else None,
                    float(row["bundle_entropy"]), float(row["max_accuracy"]),
                    bool(int(row["diverged"])))
        for row in rows)
    return ConflictReport(
        layers=layers, num_samples=int(first["num_samples"]),
        num_classes=int(first["num_classes"]),
        weight_amplitude=float(first["weight_amplitude"]),
        learning_rate=float(first["learning_rate"]), batch_size=int(first["batch_size"]),
        epoch=int(first["epoch"]) if first["epoch"] else None)


def _figure(report: ConflictReport, title: str | None):
    """The matplotlib Figure of `plot` (no pyplot, so no global backend state)."""
    from matplotlib.figure import Figure

    positions = range(len(report))
    figure = Figure(figsize=(max(6.0, 0.18 * len(report) + 2.0), 6.0), layout="constrained")
    entropy_axes, bundles_axes = figure.subplots(2, 1, sharex=True)
    entropy = [layer.bundle_entropy for layer in report]
    entropy_axes.plot(positions, entropy, color="tab:blue", marker=".")
    conflicting = [i for i, layer in enumerate(report) if layer.conflicting]
    entropy_axes.scatter(conflicting, [entropy[i] for i in conflicting], color="tab:red",
                         zorder=3, label="conflicting")
    entropy_axes.set_ylabel("bundle entropy (nats)")
    entropy_axes.legend(loc="upper left")
    bundles_axes.plot(positions, [math.nan if layer.num_bundles is None else layer.num_bundles
                                  for layer in report], color="tab:green", marker=".")
    bundles_axes.set_yscale("log")
    bundles_axes.set_ylim(0.8, report.num_samples * 1.25)
    bundles_axes.set_ylabel(f"number of bundles (N = {report.num_samples})")
    step = max(1, len(report) // 40)
    bundles_axes.set_xticks(list(positions)[::step], report.names[::step], rotation=90,
                            fontsize=7)
    entropy_axes.set_title(title or _default_title(report), fontsize=9)
    return figure


def _default_title(report: ConflictReport) -> str:
    """Epoch, conflicting/diverged counts and the transform's constants."""
    epoch = "" if report.epoch is None else f"epoch {report.epoch}: "
    diverged = f", {len(report.diverged)} diverged" if report.diverged else ""
    return (f"{epoch}{len(report.conflicting)}/{len(report)} layers conflicting{diverged} "
            f"(lr={report.learning_rate:g}, bs={report.batch_size}, "
            f"w_max={report.weight_amplitude:.4g})")


def _finite_or_none(value: float) -> float | None:
    """None for NaN or inf (strict JSON has neither), else the value."""
    return value if math.isfinite(value) else None


def _none_to_nan(value: float | None) -> float:
    """Inverse of `_finite_or_none` (inf comes back as NaN)."""
    return math.nan if value is None else float(value)
