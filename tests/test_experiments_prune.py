"""The prune and lesion commands on a tiny run, and the lesion study's bookkeeping."""

import csv
import json
import pathlib
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from absl import flags

from experiments import lesion, prune
from experiments.runtime import rundir
from experiments.trials import trained

# A 6-layer ResNet (one identity block, one projection block) trained for one
# epoch. The tiny learning rate makes every branch conflicting (a * lr / bs is
# lost next to w_max), so both blocks are removed and both lesion curves exist.
TINY_RUN = ["--dataset=digits", "--model=resnet", "--blocks=1,1,0,0", "--epochs=1",
            "--learning_rate=1e-9", "--optimizer=adam", "--noaugment", "--measure_every=0",
            "--measure_samples=128", "--noexport", "--progress=none"]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, command) -> pathlib.Path:
    """A prune run that trained its own tiny network."""
    run = tmp_path_factory.mktemp("runs") / "prune"
    command(prune, f"--run_dir={run}", "--latency_repeats=3", *TINY_RUN)
    return run


def test_prune_removes_exports_and_reports(pruned_run):
    results = json.loads((pruned_run / "results.json").read_text())
    assert results["blocks"] == ["stage1_block1", "stage2_block1"]
    assert results["conflicting_blocks"] == results["blocks"]
    before, after = results["before"], results["after"]
    assert (before["blocks"], after["blocks"]) == (2, 0)
    assert after["weight_layers"] == before["weight_layers"] - 4
    assert after["parameters"] < before["parameters"]
    assert after["keras_bytes"] < before["keras_bytes"]
    assert after["savedmodel_bytes"] < before["savedmodel_bytes"]
    assert results["pruned_vs_lesioned_max_abs_diff"] <= 1e-5
    assert results["savedmodel_vs_pruned_max_abs_diff"] <= 1e-5
    assert after["test_accuracy"] == results["test_accuracy_pruned_before_finetune"]
    assert (pruned_run / "export" / "saved_model.pb").exists()
    reloaded = keras.models.load_model(pruned_run / "pruned.keras")
    assert reloaded.count_params() == after["parameters"]


def test_lesion_study_writes_curves_and_plot(command, pruned_run, tmp_path):
    run = tmp_path / "lesion"
    command(lesion, f"--run_dir={run}", f"--source_run={pruned_run / 'train'}",
             "--lesion_draws=3")
    with open(run / "lesion.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["group"], r["k"], r["draws"]) for r in rows] == [
        ("conflicting", "1", "3"), ("conflicting", "2", "3"), ("any", "1", "3"),
        ("any", "2", "3")]
    with open(run / "lesion_draws.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == 12
    assert (run / "lesion.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((run / "results.json").read_text())
    everything = [r for r in rows if r["group"] == "conflicting" and r["k"] == "2"][0]
    # The physically pruned network scores as the network with both blocks lesioned.
    assert results["all_conflicting_removed"]["test_accuracy"] == pytest.approx(
        float(everything["test_accuracy_mean"]), abs=1e-9)
    assert results["all_conflicting_removed"]["blocks"] == 0


def test_lesion_study_with_the_reference_codes_k_ranges(command, pruned_run, tmp_path):
    run = tmp_path / "lesion"
    command(lesion, f"--run_dir={run}", f"--source_run={pruned_run / 'train'}",
             "--lesion_draws=2", "--lesion_k=reference")
    results = json.loads((run / "results.json").read_text())
    # 2 conflicting blocks, 0 others: k = 1 .. 2-1 for conflicting and for any.
    assert results["k_rule"] == "reference"
    assert [(r["group"], r["k"], r["draws"]) for r in results["curves"]] == [
        ("conflicting", 1, 2), ("any", 1, 2)]


def test_draw_sets_draw_distinct_blocks_of_each_group():
    groups = {"conflicting": ["a", "b", "c"], "non_conflicting": ["d"],
              "any": ["a", "b", "c", "d"]}
    largest = {"conflicting": 3, "non_conflicting": 3, "any": 3}
    rows = lesion.draw_sets(groups, largest, draws=4, seed=0)
    assert {(r["group"], r["k"]) for r in rows} == {
        ("conflicting", 1), ("conflicting", 2), ("conflicting", 3), ("non_conflicting", 1),
        ("any", 1), ("any", 2), ("any", 3)}
    for row in rows:
        assert len(set(row["removed"])) == row["k"]
        assert set(row["removed"]) <= set(groups[row["group"]])
    assert rows == lesion.draw_sets(groups, largest, draws=4, seed=0)
    fewer = lesion.draw_sets(groups, {"conflicting": 2, "non_conflicting": 0, "any": 1},
                             draws=4, seed=0)
    assert sorted({(r["group"], r["k"]) for r in fewer}) == [
        ("any", 1), ("conflicting", 1), ("conflicting", 2)]


def test_k_ranges_of_the_paper_and_of_the_reference_code():
    # The reference's 120-layer ResNet: 59 blocks, say 35 conflicting.
    names = [f"b{i}" for i in range(59)]
    groups = {"conflicting": names[:35], "non_conflicting": names[35:], "any": names}
    assert lesion.largest_k(groups, "conflicting") == dict.fromkeys(groups, 35)
    assert lesion.largest_k(groups, "conflicting", max_k=40) == dict.fromkeys(groups, 40)
    assert lesion.largest_k(groups, "reference") == {
        "conflicting": 34, "non_conflicting": 23, "any": 34}
    rows = lesion.draw_sets(groups, lesion.largest_k(groups, "reference"), draws=15, seed=0)
    counts = {group: sorted({r["k"] for r in rows if r["group"] == group}) for group in groups}
    assert counts == {"conflicting": list(range(1, 35)), "non_conflicting": list(range(1, 24)),
                      "any": list(range(1, 35))}
    assert len(rows) == 15 * (34 + 23 + 34)
    with pytest.raises(ValueError, match="'conflicting' or 'reference'"):
        lesion.largest_k(groups, "paper")


def test_the_reference_draws_any_blocks_from_the_first_58_of_59():
    # lesion.py (ba6985f): all_layers = [i for i in range(0, 58)] on the 59-block ResNet.
    names = [f"b{i}" for i in range(59)]
    found = SimpleNamespace(names=names, conflicting=names[:35], non_conflicting=names[35:])
    reference = lesion.lesion_groups(found, "reference")
    assert reference["any"] == names[:58] and "b58" not in reference["any"]
    assert (reference["conflicting"], reference["non_conflicting"]) == (names[:35], names[35:])
    assert lesion.lesion_groups(found, "conflicting")["any"] == names
    rows = lesion.draw_sets(reference, lesion.largest_k(reference, "reference"), draws=15,
                            seed=0)
    drawn = {block for row in rows if row["group"] == "any" for block in row["removed"]}
    assert drawn <= set(names[:58]) and len(drawn) == 58


def test_lesion_max_k_is_refused_with_the_reference_k_rule():
    flags.FLAGS.unparse_flags()
    try:
        with pytest.raises(flags.IllegalFlagValueError, match="Drop one of the two flags"):
            flags.FLAGS(["lesion", "--lesion_k=reference", "--lesion_max_k=4"])
    finally:
        flags.FLAGS.unparse_flags()


def test_each_distinct_lesion_is_evaluated_once_and_averaged():
    calls = []
    rows = [{"group": "any", "k": 1, "draw": d, "removed": [name]}
            for d, name in enumerate(["a", "b", "a"])]

    def accuracy(removed):
        calls.append(removed)
        return {"a": 0.5, "b": 0.8}[removed[0]]

    curve = lesion.curves(lesion.evaluate_draws(rows, accuracy))
    assert calls == [["a"], ["b"]]
    assert curve == [{"group": "any", "k": 1, "draws": 3,
                      "test_accuracy_mean": pytest.approx(0.6),
                      "test_accuracy_std": pytest.approx(np.std([0.5, 0.8, 0.5]))}]


def test_lesion_logs_one_progress_line_per_group_and_k():
    rows = [{"group": group, "k": k, "draw": d, "removed": [f"b{k}{d}"]}
            for k in (1, 2) for group in ("non_conflicting", "any") for d in range(2)]
    lines = []
    lesion.evaluate_draws(rows, lambda removed: 0.25 if removed[0].endswith("0") else 0.75,
                          log=lines.append)
    assert lines == [
        "k=1 non_conflicting: test accuracy 0.5000 over 2 draws (2/8 lesions)",
        "k=1 any: test accuracy 0.5000 over 2 draws (4/8 lesions)",
        "k=2 non_conflicting: test accuracy 0.5000 over 2 draws (6/8 lesions)",
        "k=2 any: test accuracy 0.5000 over 2 draws (8/8 lesions)"]


def test_source_run_with_several_trials_asks_for_one(tmp_path):
    for seed in (0, 1):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "state.json").write_text("{}")
    with pytest.raises(rundir.RunDirError, match=r"its trials are .*seed0.*seed1.*pass one"):
        trained.trial_path(tmp_path)
    assert trained.trial_path(tmp_path / "seed1") == tmp_path / "seed1"
    with pytest.raises(rundir.RunDirError, match="train one first"):
        trained.trial_path(tmp_path / "seed1" / "nothing")
