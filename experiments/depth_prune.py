"""depth_prune: remove the k lowest-ranked residual blocks by each score, before and after healing.

    python -m experiments depth_prune --flagfile=flags/depth_prune_digits.cfg

For each network of --networks (``vit``: `experiments.trials.vit`, a small vision
transformer of nested `EncoderBlock` layers; ``resnet``: the papers' ResNet
`cb_keras.paper.models.resnet` with --resnet_blocks) and each of --seeds seeds
(--seed, --seed + 1, ...), it trains the network from scratch for --epochs
on --dataset (no augmentation), then ranks its residual blocks with every
method of --methods (`cb_keras.pruning.block_importance` on --score_samples
training samples; docs/method.md §4.1) and, for k = 1 .. n-1, removes the k
lowest-ranked blocks and measures the test accuracy right after the removal
and after healing: --heal_epochs of training with a fresh optimizer of the
same kind, the same for every method.

The removal is evaluated and healed on `cb_keras.pruning.Lesion` of the
trained network (the branches of the removed blocks multiplied by 0), which
equals the physically smaller network (`remove_blocks`) in its outputs and,
as the removed branches get zero gradients, in its healing; so the whole
study traces one model per network and seed. The parameters are counted on
the smaller network, and the outputs of the network without the k = n-1
blocks of the first method are checked against the lesioned ones.

Writes to the run directory:

- ``depth_prune.csv``: one row per network, seed, method and k (`COLUMNS`);
- ``depth_prune_mean.csv``: mean and std over the seeds (`MEAN_COLUMNS`);
- ``depth_prune.png``: test accuracy over k, one panel per network and phase
  (after removal, after healing), one curve per method, mean ± std;
- ``results.json``: ``command``, ``dataset``, ``networks``, ``methods``,
  ``intact`` (test accuracy per network and seed), ``orders`` (removal order
  per network, seed and method), ``rows`` (the mean rows), ``area`` (per
  network and method, the mean over k of the mean test accuracy after
  removal and after healing), ``pruned_vs_lesioned_max_abs_diff``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from absl import app, flags

from cb_keras import files, importance, pruning
from cb_keras.autotune import trainer
from cb_keras.paper import data, models
from experiments.runtime import command, console, rundir, serving
from experiments.trials import recipe, vit
from experiments.runtime.config import RunConfig
from experiments.options import run as run_flags
from experiments.options import training as training_flags
from experiments.options.parsers import define_int_list

NETWORKS = ("vit", "resnet")
OFFLINE_DATASETS = ("digits", "mnist5k")
NETWORK_LIST = flags.DEFINE_multi_enum(
    "networks", list(NETWORKS), list(NETWORKS),
    "vit: a small vision transformer of nested residual EncoderBlock layers; resnet: the "
    "papers' ResNet with --resnet_blocks.")
METHOD_LIST = flags.DEFINE_multi_enum(
    "methods", list(importance.METHODS), list(importance.METHODS),
    "Block scores to compare (docs/method.md §4.1).")
VIT_BLOCKS = flags.DEFINE_integer("vit_blocks", 6, "vit: encoder layers.", lower_bound=2)
VIT_DIM = flags.DEFINE_integer("vit_dim", 32, "vit: token features.", lower_bound=1)
VIT_HEADS = flags.DEFINE_integer("vit_heads", 2, "vit: attention heads.", lower_bound=1)
VIT_PATCH = flags.DEFINE_integer("vit_patch", 2, "vit: patch side in pixels.", lower_bound=1)
RESNET_BLOCKS = define_int_list(
    "resnet_blocks", [3, 3, 0, 0], "resnet: blocks per stage, four integers.", __name__)
HEAL_EPOCHS = flags.DEFINE_integer(
    "heal_epochs", 1, "Epochs of healing after each removal (0: none).", lower_bound=0)
SCORE_SAMPLES = flags.DEFINE_integer(
    "score_samples", 512, "Training samples the scores are computed on.", lower_bound=1)
flags.register_validator(RESNET_BLOCKS, lambda value: len(value) == 4 and sum(value) >= 2,
                         "--resnet_blocks must be four integers with at least 2 blocks.")
flags.adopt_module_key_flags(run_flags)
# --dataset, --epochs, --batch_size, --learning_rate, --optimizer (of training and
# healing), --seed (of the first network; seed k is seed + k) and --seeds (networks
# trained per kind) are the commands' shared training flags; their defaults are
# train's, so the flagfile sets them.
flags.adopt_module_key_flags(training_flags)

CSV_FILE = "depth_prune.csv"
MEAN_FILE = "depth_prune_mean.csv"
PLOT_FILE = "depth_prune.png"
COLUMNS = ("network", "seed", "method", "k", "blocks_left", "removed", "parameters",
           "intact_accuracy", "removed_accuracy", "healed_accuracy")
MEAN_COLUMNS = ("network", "method", "k", "seeds", "parameters_mean", "removed_accuracy_mean",
                "removed_accuracy_std", "healed_accuracy_mean", "healed_accuracy_std")
COLORS = {"conflicts": "tab:red", "block_influence": "tab:blue",
          "angular_distance": "tab:green", "last": "black", "random": "tab:gray"}


@dataclasses.dataclass(frozen=True)
class Config:
    """What the flags of `depth_prune` say."""

    run: RunConfig
    dataset: str
    networks: tuple[str, ...]
    methods: tuple[str, ...]
    vit: dict[str, int]
    resnet_blocks: tuple[int, ...]
    epochs: int
    heal_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    seeds: tuple[int, ...]
    score_samples: int


def read_flags() -> Config:
    """The flags of `depth_prune`, read once.

    Raises:
        app.UsageError: a --dataset that is not offline (`OFFLINE_DATASETS`).
    """
    dataset = training_flags.DATASET.value
    if dataset not in OFFLINE_DATASETS:
        raise app.UsageError(f"depth_prune trains on an offline data set: --dataset must be one "
                             f"of {', '.join(OFFLINE_DATASETS)}, not {dataset}.")
    seed = training_flags.SEED.value
    return Config(
        run_flags.run_config("depth_prune", __name__), dataset,
        tuple(dict.fromkeys(NETWORK_LIST.value)), tuple(dict.fromkeys(METHOD_LIST.value)),
        {"blocks": VIT_BLOCKS.value, "dim": VIT_DIM.value, "heads": VIT_HEADS.value,
         "patch": VIT_PATCH.value}, tuple(RESNET_BLOCKS.value), training_flags.EPOCHS.value,
        HEAL_EPOCHS.value, training_flags.BATCH_SIZE.value, training_flags.LEARNING_RATE.value,
        training_flags.OPTIMIZER.value, tuple(range(seed, seed + training_flags.SEEDS.value)),
        SCORE_SAMPLES.value)


def build(network: str, cfg: Config, info: data.DataInfo) -> tuple[keras.Model, Any]:
    """The untrained `network` and its ``layers=`` argument for `cb_keras.pruning`."""
    if network == "vit":
        try:
            return vit.vit(info.input_shape, info.num_classes, **cfg.vit), vit.EncoderBlock
        except ValueError as error:
            raise app.UsageError(str(error)) from error
    return models.resnet(cfg.resnet_blocks, info.input_shape, info.num_classes), None


def study(network: str, seed: int, cfg: Config,
          log: Callable[[str], None]) -> tuple[float, dict[str, list[str]], list[dict], float]:
    """Train one network, rank its blocks by every method, remove and heal.

    Returns:
        ``(intact test accuracy, {method: removal order}, rows (`COLUMNS`),
        max |pruned - lesioned| of the check)``.
    """
    keras.utils.set_random_seed(seed)
    train, test, info = data.load(cfg.dataset, batch_size=cfg.batch_size, augment=False,
                                  shuffle_seed=seed)
    model, layers = build(network, cfg, info)
    trainer.compile_model(model, recipe.OPTIMIZERS[cfg.optimizer](cfg.learning_rate))
    model.fit(train, epochs=cfg.epochs, verbose=0)
    intact = serving.accuracy(model, test)
    log(f"{network} seed {seed}: trained {cfg.epochs} epochs, test accuracy {intact:.4f}")
    x, y = data.measurement_sample(cfg.dataset, cfg.score_samples, seed=seed)
    orders = {method: importance.removal_order(pruning.block_importance(
                  model, x, y, method=method, layers=layers, samples=cfg.score_samples,
                  batch_size=cfg.batch_size, seed=seed, num_classes=info.num_classes,
                  learning_rate=cfg.learning_rate))
              for method in cfg.methods}
    trained = model.get_weights()
    lesion = pruning.Lesion(model, layers=layers)
    trainer.compile_model(lesion.model, recipe.OPTIMIZERS[cfg.optimizer](cfg.learning_rate))
    # The built optimizer's state (step 0, the learning rate, zero moments), restored before
    # each healing: a fresh optimizer without a new traced train step.
    fresh_optimizer = [keras.ops.convert_to_numpy(v)
                       for v in lesion.model.optimizer.variables]
    cache: dict[frozenset, dict[str, Any]] = {}
    rows = []
    for method, order in orders.items():
        for k in range(1, len(order)):
            key = frozenset(order[:k])
            if key not in cache:
                model.set_weights(trained)
                lesioned = lesion.lesion(order[:k])
                removed = serving.accuracy(lesioned, test)
                if cfg.heal_epochs:
                    lesioned.optimizer.set_weights(fresh_optimizer)
                    lesioned.fit(train, epochs=cfg.heal_epochs, verbose=0)
                cache[key] = {
                    "removed_accuracy": removed,
                    "healed_accuracy": serving.accuracy(lesioned, test),
                    "parameters": _parameters(model, order[:k], layers)}
            rows.append({"network": network, "seed": seed, "method": method, "k": k,
                         "blocks_left": len(order) - k, "removed": ";".join(order[:k]),
                         "intact_accuracy": intact, **cache[key]})
        log(f"{network} seed {seed} {method}: order {order}; healed accuracy "
            + " ".join(f"{row['healed_accuracy']:.3f}" for row in rows
                       if row["method"] == method))
    model.set_weights(trained)
    return intact, orders, rows, _check(model, lesion, orders[cfg.methods[0]][:-1], layers, test)


def _parameters(model: keras.Model, removed: list[str], layers: Any) -> int:
    """Parameters of `model` with the `removed` blocks physically removed."""
    return int(pruning.remove_blocks(model, removed, layers=layers).count_params())


def _check(model: keras.Model, lesion: pruning.Lesion, removed: list[str], layers: Any,
           test) -> float:
    """max |outputs of the smaller network - outputs of the lesioned one| on a test batch."""
    images = next(iter(test))[0]
    pruned = pruning.remove_blocks(model, removed, layers=layers)
    difference = np.abs(keras.ops.convert_to_numpy(pruned(images, training=False))
                        - keras.ops.convert_to_numpy(
                            lesion.lesion(removed)(images, training=False))).max()
    return float(difference)


def means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over the seeds per network, method and k (`MEAN_COLUMNS`)."""
    keys = list(dict.fromkeys((row["network"], row["method"], row["k"]) for row in rows))
    out = []
    for network, method, k in keys:
        group = [row for row in rows if (row["network"], row["method"], row["k"])
                 == (network, method, k)]
        entry = {"network": network, "method": method, "k": k, "seeds": len(group),
                 "parameters_mean": float(np.mean([row["parameters"] for row in group]))}
        for phase in ("removed", "healed"):
            values = [row[f"{phase}_accuracy"] for row in group]
            entry[f"{phase}_accuracy_mean"] = float(np.mean(values))
            entry[f"{phase}_accuracy_std"] = float(np.std(values))
        out.append(entry)
    return out


def areas(mean_rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{network: {method: {removed, healed}}}``: mean over k of the mean test accuracy."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in mean_rows:
        out.setdefault(row["network"], {}).setdefault(row["method"], {"removed": [], "healed": []})
        for phase in ("removed", "healed"):
            out[row["network"]][row["method"]][phase].append(row[f"{phase}_accuracy_mean"])
    return {network: {method: {phase: float(np.mean(values)) for phase, values in v.items()}
                      for method, v in by_method.items()} for network, by_method in out.items()}


def plot(mean_rows: list[dict[str, Any]], intact: dict[str, list[float]], heal_epochs: int,
         title: str, path: pathlib.Path) -> None:
    """depth_prune.png: test accuracy over k per network (rows) and phase (columns)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    networks = list(dict.fromkeys(row["network"] for row in mean_rows))
    figure = Figure(figsize=(10, 3.6 * len(networks)), layout="constrained")
    grid = figure.subplots(len(networks), 2, squeeze=False, sharey="row")
    phases = (("removed", "right after removal"),
              ("healed", f"after {heal_epochs} healing epoch(s)"))
    for axes_row, network in zip(grid, networks):
        for axes, (phase, label) in zip(axes_row, phases):
            for method in dict.fromkeys(row["method"] for row in mean_rows):
                rows = [row for row in mean_rows
                        if (row["network"], row["method"]) == (network, method)]
                k = np.array([row["k"] for row in rows])
                mean = np.array([row[f"{phase}_accuracy_mean"] for row in rows])
                std = np.array([row[f"{phase}_accuracy_std"] for row in rows])
                axes.plot(k, mean, marker="o", markersize=4, color=COLORS[method],
                          label=method, linestyle="--" if method in ("last", "random") else "-")
                axes.fill_between(k, mean - std, mean + std, color=COLORS[method], alpha=0.12)
            axes.axhline(float(np.mean(intact[network])), color="black", linewidth=0.8,
                         linestyle=":", label="intact")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_xlabel("blocks removed (k)")
            axes.set_title(f"{network}: {label}", fontsize=10)
            axes.grid(alpha=0.3)
        axes_row[0].set_ylabel("test accuracy (mean ± std over seeds)")
    grid[0][1].legend(fontsize=8, loc="lower left")
    figure.suptitle(title, fontsize=10)
    files.save_png(figure, path)


def depth_prune(cfg: Config, run: rundir.RunDir) -> dict[str, Any]:
    """Run the study of every network and seed, write its files to `run`; returns results.json."""
    log = lambda line: print(f"depth_prune: {line}", flush=True)  # noqa: E731
    intact: dict[str, list[float]] = {}
    orders: dict[str, dict[str, dict[str, list[str]]]] = {}
    rows: list[dict[str, Any]] = []
    worst = 0.0
    for network in cfg.networks:
        for seed in cfg.seeds:
            accuracy, order, network_rows, difference = study(network, seed, cfg, log)
            intact.setdefault(network, []).append(accuracy)
            orders.setdefault(network, {})[str(seed)] = order
            rows += network_rows
            worst = max(worst, difference)
    mean_rows = means(rows)
    if run.writer:
        run.write_csv(CSV_FILE, rows, COLUMNS)
        run.write_csv(MEAN_FILE, mean_rows, MEAN_COLUMNS)
        plot(mean_rows, intact, cfg.heal_epochs,
             f"Depth pruning on {cfg.dataset}: remove the k lowest-ranked blocks "
             f"({len(cfg.seeds)} seeds)", run.file(PLOT_FILE))
    return {"command": "depth_prune", "dataset": cfg.dataset, "networks": list(cfg.networks),
            "methods": list(cfg.methods), "intact": intact, "orders": orders,
            "rows": mean_rows, "area": areas(mean_rows),
            "pruned_vs_lesioned_max_abs_diff": worst}


def summary_table(results: dict[str, Any]) -> str:
    """Per network: mean test accuracy over k after removal and after healing, per method."""
    lines = []
    for network, by_method in results["area"].items():
        intact = np.mean(results["intact"][network])
        lines.append(f"{network}: intact test accuracy {intact:.4f}; mean over k of the "
                     "test accuracy after removing k blocks")
        lines.append(console.table(
            [{"method": method, **values} for method, values in by_method.items()],
            (("method", "method", "s"), ("removed", "removed", ".4f"),
             ("healed", "healed", ".4f"))))
    lines.append(f"pruned vs lesioned outputs: max abs diff "
                 f"{results['pruned_vs_lesioned_max_abs_diff']:.2e}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Run (or show) the depth-pruning comparison."""
    command.no_arguments("depth_prune", argv)
    cfg = read_flags()
    command.execute(cfg.run, f"{cfg.dataset}-{'-'.join(cfg.networks)}",
                    lambda run, _: depth_prune(cfg, run), summary_table)


if __name__ == "__main__":
    app.run(main)
