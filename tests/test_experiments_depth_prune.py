"""The depth_prune command on a tiny run, its bookkeeping, and healing on the lesioned network."""

import csv
import json
import pathlib

import keras
import numpy as np
import pytest
from absl import app

from cb_keras import pruning
from experiments import depth_prune
from test_residual_kinds import ResidualMLP, residual_mlp

FLAGFILE = pathlib.Path(__file__).resolve().parents[1] / "flags" / "depth_prune_digits.cfg"
TINY_RUN = ["--dataset=digits", "--vit_blocks=3", "--vit_dim=8", "--resnet_blocks=2,1,0,0",
            "--epochs=1", "--heal_epochs=1", "--seeds=2", "--score_samples=64",
            "--optimizer=adam"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, command) -> pathlib.Path:
    run = tmp_path_factory.mktemp("runs") / "depth_prune"
    command(depth_prune, f"--run_dir={run}", *TINY_RUN)
    return run


def test_tiny_run_writes_rows_means_plot_and_results(tiny_run):
    with open(tiny_run / depth_prune.CSV_FILE) as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == depth_prune.COLUMNS
    # 2 networks x 2 seeds x 5 methods x k = 1, 2 (3 blocks each)
    assert len(rows) == 40
    assert {(row["network"], row["seed"]) for row in rows} == {
        (network, seed) for network in ("vit", "resnet") for seed in ("0", "1")}
    # healing trains (a fresh optimizer state, not a zero learning rate)
    assert any(row["healed_accuracy"] != row["removed_accuracy"] for row in rows
               if row["network"] == "vit")
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["orders"]["vit"]["0"]["last"] == ["encoder2", "encoder1", "encoder0"]
    assert results["orders"]["resnet"]["1"]["last"] == [
        "stage2_block1", "stage1_block2", "stage1_block1"]
    for network in ("vit", "resnet"):
        for seed in ("0", "1"):
            for method, order in results["orders"][network][seed].items():
                removed = [row["removed"] for row in rows if
                           (row["network"], row["seed"], row["method"]) == (network, seed, method)]
                assert removed == [";".join(order[:1]), ";".join(order[:2])]
    by_set = {}
    for row in rows:  # the same removal gives the same numbers, whichever method chose it
        key = (row["network"], row["seed"], frozenset(row["removed"].split(";")))
        values = (row["removed_accuracy"], row["healed_accuracy"], row["parameters"])
        assert by_set.setdefault(key, values) == values
    assert results["pruned_vs_lesioned_max_abs_diff"] <= 1e-5
    assert len(results["rows"]) == 2 * 5 * 2 and results["rows"][0]["seeds"] == 2
    assert set(results["area"]["vit"]) == set(depth_prune.importance.METHODS)
    assert (tiny_run / depth_prune.PLOT_FILE).stat().st_size > 10_000
    with open(tiny_run / depth_prune.MEAN_FILE) as file:
        assert len(list(csv.DictReader(file))) == 20


def test_means_and_areas():
    rows = [{"network": "n", "method": "last", "k": k, "seed": s, "parameters": 10 - k,
             "removed_accuracy": 0.5 + 0.1 * s - 0.1 * k, "healed_accuracy": 0.9 - 0.1 * k}
            for s in (0, 1) for k in (1, 2)]
    mean_rows = depth_prune.means(rows)
    assert [(row["k"], row["seeds"]) for row in mean_rows] == [(1, 2), (2, 2)]
    assert mean_rows[0]["removed_accuracy_mean"] == pytest.approx(0.45)
    assert mean_rows[0]["removed_accuracy_std"] == pytest.approx(0.05)
    assert depth_prune.areas(mean_rows) == {"n": {"last": {
        "removed": pytest.approx(0.4), "healed": pytest.approx(0.75)}}}


def test_healing_the_lesioned_network_equals_healing_the_pruned_one():
    model = residual_mlp(features=6, width=8, blocks=3, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    pruned = pruning.remove_blocks(model, ["mlp1"], layers=ResidualMLP)
    lesioned = pruning.lesioned(model, ["mlp1"], layers=ResidualMLP)
    for network in (pruned, lesioned):
        network.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
        network.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pruned(x)),
                               keras.ops.convert_to_numpy(lesioned(x)), rtol=1e-4, atol=1e-5)
    assert np.abs(keras.ops.convert_to_numpy(model.get_layer("mlp1").out.kernel)
                  - keras.ops.convert_to_numpy(
                      pruning.remove_blocks(model, [], layers=ResidualMLP)
                      .get_layer("mlp1").out.kernel)).max() == 0  # the removed block untouched


def test_the_flagfile_reads(parse):
    parse(depth_prune, f"--flagfile={FLAGFILE}")
    cfg = depth_prune.read_flags()
    assert cfg.networks == ("vit", "resnet") and cfg.seeds == (0, 1, 2)
    assert cfg.methods == depth_prune.importance.METHODS
    assert cfg.resnet_blocks == (3, 3, 0, 0) and cfg.vit["blocks"] == 6


def test_a_dataset_that_needs_a_download_is_a_usage_error(parse):
    parse(depth_prune, "--dataset=cifar10")
    with pytest.raises(app.UsageError, match=r"--dataset must be one of digits, mnist5k"):
        depth_prune.read_flags()


def test_a_vit_that_does_not_fit_the_images_is_a_usage_error(command, tmp_path):
    with pytest.raises(app.UsageError, match=r"divisible by patch=3"):
        command(depth_prune, f"--run_dir={tmp_path / 'bad'}", "--networks=vit", "--vit_patch=3",
                 "--epochs=1", "--seeds=1", "--optimizer=adam")
