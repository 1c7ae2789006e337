"""Auto-tune: the papers' architecture search by conflicting layer removal (docs/method.md §3).

- `config`: `AutoTuneConfig`, the search's settings.
- `search`: `auto_tune`, the search loop, and its `AutoTuneResult`.
- `rules`: the pruning rules (three versions: docs/reproduction.md).
- `state`: `SearchState`, the attempts of a search so far (what ``save_state`` saves),
  and its `SearchAttempt` records.
- `check`: `ConflictCheck`, the a^(L) check during training, and its `Restart` record.
- `trainer`: what the search calls to train one network (`fit_trainer`).

Built on the measuring core (`cb_keras`) and the papers' setting (`cb_keras.paper`).
"""

from cb_keras.autotune import check, config, rules, search, state, trainer
from cb_keras.autotune.config import AutoTuneConfig
from cb_keras.autotune.search import AutoTuneResult, auto_tune
from cb_keras.autotune.state import SearchAttempt, SearchState
from cb_keras.autotune.trainer import TrainOutcome, TrainRequest, fit_trainer

__all__ = ["AutoTuneConfig", "AutoTuneResult", "auto_tune", "SearchState", "SearchAttempt",
           "fit_trainer", "TrainRequest", "TrainOutcome", "check", "config", "rules", "search",
           "state", "trainer"]
