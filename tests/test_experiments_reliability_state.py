"""Reliability, round 3: no silent wrong search result from a lost or edited search state,
and edited results files are refused in one line.

One small auto_tune search is made once per module; each test copies it and
damages the copy.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from experiments import auto_tune
from experiments.runtime import rundir

@pytest.fixture(scope="module")
def finished_search(command, tmp_path_factory, restarting_search) -> pathlib.Path:
    """A finished search: attempt 0 restarted after epoch 1, attempt 1 is the result."""
    path = tmp_path_factory.mktemp("search") / "reference"
    command(auto_tune, *restarting_search, f"--run_dir={path}")
    results = json.loads((path / "results.json").read_text())
    assert results["final_blocks"] == [0, 1, 0, 0] and results["num_restarts"] == 1
    return path


def unfinished_copy(finished_search: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of the search as it was before its results were written."""
    path = tmp_path / "run"
    shutil.copytree(finished_search, path, ignore=shutil.ignore_patterns(".lock"))
    (path / "results.json").unlink()
    return path


def test_a_search_whose_state_agrees_with_its_trials_finishes_as_before(
        command, finished_search, tmp_path, restarting_search):
    path = unfinished_copy(finished_search, tmp_path)
    command(auto_tune, *restarting_search, f"--run_dir={path}")
    resumed, reference = (json.loads((p / "results.json").read_text())
                          for p in (path, finished_search))
    assert resumed["final_blocks"] == reference["final_blocks"] == [0, 1, 0, 0]
    assert resumed["num_restarts"] == 1 and resumed["total_epochs"] == reference["total_epochs"]


def _drop_last_attempt(state):
    state["attempts"].pop()
    return state


def _drop_field(state):
    del state["attempts"][1]["blocks"]
    return state


def _other_config(state):
    state["config"]["epochs"] = 7
    return state


def _forget_restart(state):  # as saved before attempt 0 stopped at its conflict
    del state["attempts"][1:]
    state["attempts"][0].update(restart=None, completed_epochs=None, summary=None)
    return state


@pytest.mark.parametrize("damage, message", [
    ("missing", "is missing, but the run directory holds the trials attempt00, attempt01"),
    ("{}", "is not a search state of these flags"),
    (_drop_last_attempt,
     "ends with the restart of attempt 0 but lacks the attempt that restart began"),
    (_drop_field, "an attempt lacks one of the fields"),
    (_other_config, "is not a search state of these flags"),
    ("truncated", "is not a valid run file"),
    (_forget_restart, "lacks the restart of attempt 0, whose trial stopped after epoch 1 of 2"),
    ("older-version", "was written by an earlier cb_keras, which called the search's attempts "
                      "'runs'"),
], ids=["missing", "empty-object", "last-attempt-lost", "field-lost", "config-edited",
        "truncated", "restart-lost", "older-version"])
def test_a_search_state_that_disagrees_with_its_trials_is_refused_naming_the_file(
        command, finished_search, tmp_path, damage, message, restarting_search):
    path = unfinished_copy(finished_search, tmp_path)
    search = path / auto_tune.SEARCH_FILE
    if damage == "missing":
        search.unlink()
    elif damage == "truncated":
        search.write_text(search.read_text()[:200])
    elif damage == "{}":
        search.write_text("{}")
    elif damage == "older-version":  # as cb_keras saved it before "run" became "attempt"
        search.write_text(search.read_text().replace('"attempt', '"run'))
        for trial in path.glob("attempt*"):
            trial.rename(path / trial.name.replace("attempt", "run"))
    else:
        search.write_text(json.dumps(damage(json.loads(search.read_text()))))
    with pytest.raises(rundir.RunDirError) as refused:
        command(auto_tune, *restarting_search, f"--run_dir={path}")
    assert str(refused.value).startswith(str(search)) and message in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not (path / "results.json").exists()


@pytest.mark.parametrize("content", ["{}", '{"finished": true}', '{"finished": false}'],
                         ids=["empty-object", "no-numbers", "not-finished"])
def test_an_edited_results_file_is_refused_in_one_line(
        command, finished_search, tmp_path, content, restarting_search):
    path = tmp_path / "run"
    shutil.copytree(finished_search, path, ignore=shutil.ignore_patterns(".lock"))
    (path / "results.json").write_text(content)
    with pytest.raises(rundir.RunDirError, match="results.json is not the results of a "
                                                  "finished run .* edited or damaged"):
        command(auto_tune, *restarting_search, f"--run_dir={path}")
