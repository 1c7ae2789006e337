"""Block scores for depth pruning: cb_keras.importance and pruning.block_importance
against an independent NumPy computation (docs/method.md §4.1)."""

import math

import keras
import numpy as np
import pytest

from cb_keras import importance, pruning
from cb_keras.report import LayerResult
from test_residual_kinds import ResidualMLP, three_kinds


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return three_kinds()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(40, 3, 4, 6)).astype("float32")


def _reference_scores(x_in: np.ndarray, y_out: np.ndarray) -> tuple[float, float]:
    """BI and angular distance, one sample and one position at a time."""
    cosines = []
    for n in range(x_in.shape[0]):
        for position in np.ndindex(*x_in.shape[1:-1]):
            a = x_in[n][position].astype(float)
            b = y_out[n][position].astype(float)
            cosines.append(a @ b / max(math.sqrt(a @ a) * math.sqrt(b @ b), 1e-8))
    angles = [math.acos(min(1.0, max(-1.0, c))) / math.pi for c in cosines]
    return 1.0 - sum(cosines) / len(cosines), sum(angles) / len(angles)


def test_similarity_scores_equal_an_independent_numpy_computation(model, x):
    # Block inputs and outputs read off the model's own graph, not through pruning.
    pairs = {"blk1": (model.get_layer("stem").output, model.get_layer("blk1_add").output),
             "blk2": (model.get_layer("blk1_add").output, model.get_layer("blk3").input),
             "blk3": (model.get_layer("blk3").input, model.get_layer("blk3").output)}
    reader = keras.Model(model.input, [t for pair in pairs.values() for t in pair])
    arrays = [keras.ops.convert_to_numpy(a) for a in reader(x[:32])]
    expected = {name: _reference_scores(arrays[2 * i], arrays[2 * i + 1])
                for i, name in enumerate(pairs)}
    bi = pruning.block_importance(model, x, method="block_influence", layers=ResidualMLP,
                                  samples=32, batch_size=8)
    angular = pruning.block_importance(model, x, method="angular_distance",
                                       layers=ResidualMLP, samples=32, batch_size=8)
    assert list(bi) == list(angular) == ["blk1", "blk2", "blk3"]
    for name, (reference_bi, reference_angular) in expected.items():
        assert bi[name] == pytest.approx(reference_bi, rel=1e-5, abs=1e-7)
        assert angular[name] == pytest.approx(reference_angular, rel=1e-5, abs=1e-7)
    assert len({round(v, 6) for v in bi.values()}) == 3  # the blocks differ


def test_projection_blocks_compare_the_output_with_the_projected_input():
    inputs = keras.Input((5, 4))
    projected = keras.layers.Conv1D(6, 1, name="proj")(inputs)
    branch = keras.layers.Conv1D(6, 3, padding="same", name="branch")(inputs)
    model = keras.Model(inputs, keras.layers.Add(name="blk_add")([branch, projected]))
    x = np.random.default_rng(0).normal(size=(10, 5, 4)).astype("float32")
    reader = keras.Model(inputs, [projected, model.output])
    expected = _reference_scores(*[keras.ops.convert_to_numpy(a) for a in reader(x)])
    scores = pruning.block_importance(model, x, method="block_influence")
    assert scores == {"blk": pytest.approx(expected[0], rel=1e-5)}


def test_cosines_of_known_vectors():
    x = np.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [2.0, 0.0]]])
    y = np.array([[[0.0, 3.0], [2.0, 2.0]], [[1.0, 0.0], [-1.0, 0.0]]])
    np.testing.assert_allclose(importance.cosines(x, y), [0.0, 1.0, 0.0, -1.0], atol=1e-12)
    assert importance.block_influence(np.array([0.0, 1.0, 0.0, -1.0])) == 1.0
    assert importance.angular_distance(np.array([0.0, 1.0, -1.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"same shape \(N, \.\.\., D\), got \(2, 2, 2\)"):
        importance.cosines(x, y[:, :1])


def test_last_random_and_the_removal_order(model, x):
    last = pruning.block_importance(model, x, method="last", layers=ResidualMLP)
    assert importance.removal_order(last) == ["blk3", "blk2", "blk1"]
    random = [pruning.block_importance(model, x, method="random", layers=ResidualMLP, seed=s)
              for s in (0, 0, 1)]
    assert random[0] == random[1] != random[2]
    assert importance.removal_order({"a": 0.5, "b": 0.1, "c": 0.5, "d": 0.9}) \
        == ["b", "c", "a", "d"]  # ties: the deeper block first


def test_conflict_scores_put_conflicting_branches_first():
    results = [LayerResult("dead", 1, 1.1, 0.3), LayerResult("mixed", 20, 0.2, 0.9),
               LayerResult("few", 8, 0.0, 1.0), LayerResult("many", 60, 0.0, 1.0)]
    scores = {r.name: importance.conflict_score([r], 64) for r in results}
    assert scores == {"dead": -1.1, "mixed": -0.2, "few": 8 / 64, "many": 60 / 64}
    assert importance.removal_order(scores) == ["dead", "mixed", "few", "many"]
    assert importance.conflict_score([results[0], results[3]], 64) == 60 / 64
    with pytest.raises(ValueError, match="branch 'nan' diverged"):
        importance.conflict_score([LayerResult.diverged_layer("nan")], 64)


def test_conflicts_method_ranks_a_dead_branch_first(model):
    copy = pruning.remove_blocks(model, [])
    dense = copy.get_layer("blk2_fc2")
    dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3, 4, 6)).astype("float32"), rng.integers(0, 3, 64)
    scores = pruning.block_importance(copy, x, y, method="conflicts", layers=ResidualMLP,
                                      num_classes=3, learning_rate=1e-3, samples=64)
    assert importance.removal_order(scores)[0] == "blk2" and scores["blk2"] < 0
    with pytest.raises(ValueError, match="needs the labels y and num_classes= and "):
        pruning.block_importance(copy, x, y, method="conflicts", layers=ResidualMLP)
    with pytest.raises(ValueError, match=r"method must be one of \['conflicts', "):
        pruning.block_importance(copy, x, method="taylor")
