"""Conflict-aware hyperparameter search: the a^(L) check for Optuna and Keras Tuner.

Each integration is its own module, imported on demand, so ``import
cb_keras`` imports neither search library:

- `cb_keras.integrations.optuna`: `ConflictPruningCallback`, prunes an
  Optuna trial whose a^(L) conflicts (``pip install 'cb_keras[optuna]'``).
- `cb_keras.integrations.keras_tuner`: `ConflictStop`, stops a Keras Tuner
  trial whose a^(L) conflicts and scores it as the objective's worst value
  (``pip install 'cb_keras[tuner]'``).

Both run the same check (`cb_keras.integrations.window.WindowCheck`);
docs/search.md has complete examples.
"""
