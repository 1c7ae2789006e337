"""Scores that rank residual blocks for depth pruning (docs/method.md §4.1); NumPy only.

One score per block, lower = removed first; `removal_order` turns scores
into the order of removal (ties: the deeper block first). The block inputs
and outputs, and the bundle metrics of the branches, are gathered by
`cb_keras.pruning.block_importance`; this module only turns them into
numbers:

- ``"conflicts"`` (`conflict_score`): from the bundle metrics of a block's
  branch; conflicting branches first, the most conflicting first.
- ``"block_influence"`` (`block_influence`): ShortGPT's BI (arXiv 2403.03853),
  ``1 - mean cos(X, Y)``.
- ``"angular_distance"`` (`angular_distance`): Gromov et al. (arXiv
  2403.17887) for one block, ``mean arccos(cos(X, Y)) / pi``.
- ``"last"`` (`last_scores`): the deepest block first.
- ``"random"`` (`random_scores`): a random order drawn with a seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cb_keras.report import LayerResult

METHODS = ("conflicts", "block_influence", "angular_distance", "last", "random")
SIMILARITY_METHODS = ("block_influence", "angular_distance")
COSINE_EPSILON = 1e-8  # the floor of |x| |y| in a cosine, as torch.nn.functional.cosine_similarity


def cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine similarity of every feature vector of `x` and `y`.

    Args:
        x, y: a block's input and output, ``(N, ..., D)`` of the same shape:
            N samples, every axis between a position (a token, a pixel), the
            last axis the D features.

    Returns:
        float64 ``(N * positions,)``: ``x.y / max(|x| |y|, COSINE_EPSILON)``.
    """
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"a block's input and output must have the same shape (N, ..., D), "
                         f"got {x.shape} and {y.shape}.")
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    y = np.asarray(y, np.float64).reshape(-1, y.shape[-1])
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return np.sum(x * y, axis=1) / np.maximum(norms, COSINE_EPSILON)


def block_influence(cos: np.ndarray) -> float:
    """ShortGPT's block influence ``1 - mean cos`` of the `cosines` of one block."""
    return float(1.0 - np.mean(cos))


def angular_distance(cos: np.ndarray) -> float:
    """The mean angular distance ``arccos(cos) / pi`` (in [0, 1]) of the `cosines` of one block."""
    return float(np.mean(np.arccos(np.clip(cos, -1.0, 1.0))) / np.pi)


def conflict_score(branches: Sequence[LayerResult], num_samples: int) -> float:
    """The ``"conflicts"`` score of a block from the bundle metrics of its branch(es),
    measured on `num_samples` samples.

    A conflicting branch (bundle entropy > 0) scores ``-bundle_entropy`` (< 0:
    removed before every non-conflicting block, the most conflicting first);
    a non-conflicting one ``num_bundles / num_samples`` (in (0, 1]: the branch
    that separates the fewest samples first). A block with several branches
    scores the highest of theirs (it is kept as long as one branch is useful).

    Raises:
        ValueError: a branch diverged (NaN or inf outputs), so it has no score.
    """
    scores = []
    for result in branches:
        if result.diverged:
            raise ValueError(f"branch {result.name!r} diverged (NaN or inf outputs); its "
                             "block has no conflicts score. Retrain the network.")
        scores.append(-result.bundle_entropy if result.conflicting
                      else result.num_bundles / num_samples)
    return float(max(scores))


def last_scores(names: Sequence[str]) -> dict[str, float]:
    """``"last"``: block i of n (graph order) scores n - 1 - i, so the deepest goes first."""
    return {name: float(len(names) - 1 - i) for i, name in enumerate(names)}


def random_scores(names: Sequence[str], seed: int) -> dict[str, float]:
    """``"random"``: uniform scores in [0, 1) drawn with NumPy's generator seeded by `seed`."""
    return dict(zip(names, np.random.default_rng(seed).random(len(names)).tolist()))


def removal_order(scores: Mapping[str, float]) -> list[str]:
    """Block names from first to last removed: lowest score first; among equal scores,
    the later one in `scores` (graph order: the deeper block) first."""
    names = list(scores)
    return sorted(names, key=lambda name: (scores[name], -names.index(name)))
