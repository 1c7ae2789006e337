"""cb_keras on an accelerator without TensorFlow: correctness and speed, one table.

Run: ``benchmarks/gpu.sh`` (KERAS_BACKEND=jax by default), or
``python -m benchmarks.gpu_backends [--quick] [--epochs 120]``.

Parts, in this order (each row says what it measured; a part that cannot
run says why in its row and the next part runs):

1. ``golden``: the metric's golden cases (tests/data/bundle_cases.npz) on
   the default device: num_bundles exact, bundle entropy within 1e-6.
2. ``predict R50`` / ``measure R50``: as `benchmarks.bench_backends`, on
   the default device.
3. ``callback share``: an epoch of the main job's start network (VGG-50,
   digits, batch 64) with `ConflictingBundles` on all layers, against the
   same epoch without it.
4. ``main job``: `cb_keras.autotune` on digits (the papers' optimizer),
   if the optimizer runs on this backend.
5. ``pruning``: the papers' pruning setting, ResNet-120 on mnist5k,
   `--epochs` epochs (120), then `pruning.conflicting_blocks`, the accuracy
   of the model with the conflicting blocks removed, and of each
   single-block lesion (the largest drop shown).

``--quick`` shrinks every part (few samples, 10-layer networks, 1 epoch) to
check the script.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import keras
import numpy as np

from benchmarks.bench_backends import BLOCKS

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"


def golden() -> str:
    import cb_keras

    with np.load(FIXTURES / "bundle_cases.npz") as cases:
        failures, total = [], len(cases["names"])
        for i in range(total):
            result = cb_keras.bundle_metrics(
                cases[f"{i}_a"], cases[f"{i}_y"], num_classes=int(cases[f"{i}_C"]),
                weight_amplitude=float(cases[f"{i}_wmax"]),
                learning_rate=float(cases[f"{i}_lr"]), batch_size=int(cases[f"{i}_bs"]))
            if (result.num_bundles != int(cases[f"{i}_nb"])
                    or abs(result.bundle_entropy - float(cases[f"{i}_H"])) > 1e-6):
                failures.append(str(cases["names"][i]))
    return f"{total - len(failures)}/{total} pass" + (f"; FAILED {failures}" if failures else "")


def measure_and_predict(samples: int, size: int, blocks: tuple[int, ...]
                        ) -> list[tuple[str, str]]:
    from benchmarks.bench_backends import median_seconds
    import cb_keras
    from cb_keras.paper import models

    keras.utils.set_random_seed(0)
    model = models.resnet(blocks, (size, size, 3), 10)
    name = f"R{models.num_layers(blocks)}"
    x = np.random.default_rng(0).random((samples, size, size, 3)).astype(np.float32)
    y = np.arange(samples) % 10
    predict = median_seconds(lambda: model.predict(x, batch_size=samples, verbose=0), 3)
    measure = median_seconds(lambda: cb_keras.measure(
        model, x, y, num_classes=10, learning_rate=1e-3, batch_size=samples, layers="all",
        samples=samples), 3)
    return [(f"predict {name}", f"{predict:.3f} s"),
            (f"measure {name} (all outputs)",
             f"{measure:.3f} s ({measure / predict:.2f} x predict)")]


def callback_share(samples: int, blocks: tuple[int, ...]) -> str:
    import cb_keras
    from cb_keras.paper import data, models

    def epoch_seconds(with_callback: bool) -> float:
        train, _, info = data.load("digits", batch_size=64, shuffle_seed=0)
        keras.utils.set_random_seed(0)
        model = models.vgg(blocks, info.input_shape, info.num_classes)
        model.compile(keras.optimizers.SGD(0.01),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = data.measurement_sample("digits", samples)
        callbacks = [cb_keras.ConflictingBundles(x, y, batch_size=64, layers="all",
                                                 samples=samples)] if with_callback else []
        model.fit(train, epochs=1, verbose=0, callbacks=callbacks)  # compile
        start = time.perf_counter()
        model.fit(train, epochs=1, verbose=0, callbacks=callbacks)
        return time.perf_counter() - start

    plain, measured = epoch_seconds(False), epoch_seconds(True)
    return f"{(measured - plain) / measured:.0%} of {measured:.2f} s (plain epoch {plain:.2f} s)"


def main_job(quick: bool) -> str:
    try:
        from cb_keras import autotune
    except ImportError as error:
        return f"not run: {error}"
    from cb_keras.autotune import trainer
    from cb_keras.paper import data

    # flags/auto_tune_digits.cfg's setting (--quick: a small start, 1 epoch per attempt).
    train, test, info = data.load("digits", batch_size=64, shuffle_seed=0)
    x, y = data.measurement_sample("digits", 64)
    config = autotune.AutoTuneConfig(start_blocks=(1, 1, 1, 1) if quick else (3, 6, 12, 3),
                                     kind="vgg", epochs=1 if quick else 30, check_window=10,
                                     samples=64, learning_rate=1e-3, batch_size=64)
    fit = trainer.fit_trainer(train, test, input_shape=info.input_shape,
                              num_classes=info.num_classes, verbose=0)
    start = time.perf_counter()
    result = autotune.auto_tune(config, fit, x, y, num_classes=info.num_classes,
                                log=lambda line: None)
    return f"{time.perf_counter() - start:.1f} s, chose {result}"


def pruning_setting(epochs: int, quick: bool) -> list[tuple[str, str]]:
    from cb_keras import pruning
    from cb_keras.paper import data, models

    try:
        train, test, info = data.load("mnist5k", batch_size=64, shuffle_seed=0)
    except data.DatasetNotPreparedError as error:
        return [("pruning", f"not run: {str(error).splitlines()[0]}")]
    keras.utils.set_random_seed(0)
    model = models.resnet(models.paper_blocks(10 if quick else 120), info.input_shape,
                          info.num_classes)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(test, verbose=0)[1]
    x, y = data.measurement_sample("mnist5k", 64 if quick else 512)
    conflicts = pruning.conflicting_blocks(model, x, y, num_classes=info.num_classes,
                                           learning_rate=1e-3, batch_size=64)
    pruned = pruning.remove_blocks(model, conflicts.conflicting)
    pruned.compile(metrics=["accuracy"],
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lesion = pruning.Lesion(model)
    drops = []
    for name in conflicts.names:
        lesioned = lesion.lesion([name])
        lesioned.compile(metrics=["accuracy"],
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        drops.append((accuracy - lesioned.evaluate(test, verbose=0)[1], name))
    worst = max(drops)
    return [("pruning: train", f"{epochs} epochs in {seconds:.0f} s, test accuracy {accuracy:.4f}"),
            ("pruning: prune", f"{len(conflicts.conflicting)}/{len(conflicts.names)} blocks "
                               f"conflicting; pruned test accuracy "
                               f"{pruned.evaluate(test, verbose=0)[1]:.4f}"),
            ("pruning: lesion", f"largest single-block drop {worst[0]:+.4f} ({worst[1]})")]


def part_rows(name: str, part) -> list[tuple[str, str]]:
    """The rows of `part`, or one row with its error: the next part still runs."""
    try:
        rows = part()
    except Exception as error:  # noqa: BLE001  a table row, not a crash
        return [(name, f"FAILED: {type(error).__name__}: {error}".splitlines()[0])]
    return rows if isinstance(rows, list) else [(name, rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=120)
    args = parser.parse_args()
    samples, size = (64, 16) if args.quick else (512, 32)
    blocks = (1, 1, 1, 1) if args.quick else BLOCKS
    epochs = 1 if args.quick else args.epochs
    devices = keras.distribution.list_devices()
    rows = [("backend", f"{keras.backend.backend()} on {devices}")]
    rows += part_rows("golden", golden)
    rows += part_rows("measure", lambda: measure_and_predict(samples, size, blocks))
    rows += part_rows("callback share", lambda: callback_share(samples, blocks))
    rows += part_rows("main job", lambda: main_job(args.quick))
    rows += part_rows("pruning", lambda: pruning_setting(epochs, args.quick))
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:{width}}  {value}" for name, value in rows))


if __name__ == "__main__":
    main()
