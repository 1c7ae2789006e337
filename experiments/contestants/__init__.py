"""`compare`'s search contestants beside auto_tune: Keras Tuner (`tuner`) and
Optuna (`optuna_search`), each with and without auto-tune's a^(L) check."""
