"""Reliability, round three: one test per finding of the third attack round, by class.

1 silent wrong results and lost outputs · 2 allocations decided by a small input · 3 tracebacks
and wrong exit codes where the contract is one line and exit 2. Each test records its attack in
the fault report (tests/faults_report.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import swinbob.train.cli as train_cli
from faults_report import handled, record_class, record_fault, record_input, refused
from swinbob.data.inputs import Case
from swinbob.data.phantoms import write_cohort
from swinbob.infer.evaluate import run_evaluation
from swinbob.tasks import get_task

from test_eval import NON_RAS, IntensityOracle, rows_of, settings_for, write_btcv_case

from tiny import TINY_TRAIN_FLAGS

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]
TINY_TRAIN = [*TINY_TRAIN_FLAGS, "--workers=0", "--num_samples=1", "--warmup_epochs=0", "--max_epochs=1", "--max_steps_per_epoch=1"]

WRONG = "1 silent wrong results, lost outputs"
ALLOC = "2 allocations decided by a small input"
TRACE = "3 tracebacks, wrong exit codes"
CLASS_OF: dict[str, str] = {
    "test_a_changed_spacing_or_window_trains_on_fresh_data_from_the_same_cache_dir": WRONG,
    "test_statistics_accumulate_over_reruns_and_a_half_done_case_is_completed": WRONG,
    "test_metrics_of_cases_not_in_a_rerun_are_kept": WRONG,
}
"""Each test's attack class, for the class table of the fault report."""


@pytest.fixture(autouse=True)
def _attack_class(request):
    yield
    report = getattr(request.node, "rep_call", None)
    record_class(CLASS_OF[request.node.originalname], report is not None and report.passed)


def _errors(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


@pytest.fixture(scope="module")
def btcv(tmp_path_factory) -> Path:
    return write_cohort("btcv", tmp_path_factory.mktemp("rel3_btcv"), 2, shape=(32, 32, 40)).parent


# ----------------------------------------------------------------------------------------------
# 1. Silent wrong results and lost outputs
# ----------------------------------------------------------------------------------------------

def test_a_changed_spacing_or_window_trains_on_fresh_data_from_the_same_cache_dir(btcv, tmp_path, caplog):
    cache = tmp_path / "cache"
    base = [f"--json_list={btcv / 'dataset.json'}", f"--data_dir={btcv}", f"--cache_dir={cache}", *TINY_TRAIN]

    def train(*extra: str) -> set[str]:
        logdir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        argv = [*base, f"--logdir={logdir}", *extra]
        assert train_cli.main(argv, default_task="btcv") == 0
        return {p.name for p in cache.glob("*.pt")}

    caplog.set_level(logging.WARNING, logger="swinbob")
    first = train()
    assert first and "other preprocessing settings" not in caplog.text
    window = train("--a_min=-500", "--a_max=500")
    spacing = train("--space_x=3")
    again = train()
    new_window, new_spacing = window - first, spacing - window
    fresh = len(new_window) == len(first) and len(new_spacing) == len(first) and again == spacing
    record_fault("--a_min/--a_max, then --space_x changed between --cache_dir runs", survived=fresh,
                 data_lost=int(not fresh))
    assert len(new_window) == len(first) and len(new_spacing) == len(first)  # a new entry per cached volume
    assert again == spacing  # the first settings again: their entries are reused, nothing new
    assert caplog.text.count("other preprocessing settings") == 2 * 2  # train and validation sets, per changed run


def _unlabelled(tmp_path: Path, name: str, seed: int) -> Case:
    labelled = write_btcv_case(tmp_path / "data", name, NON_RAS, seed)
    return Case(name, labelled.image, None)


def test_statistics_accumulate_over_reruns_and_a_half_done_case_is_completed(tmp_path):
    first, second = _unlabelled(tmp_path, "first", 0), _unlabelled(tmp_path, "second", 1)
    settings = settings_for(get_task("btcv"), tmp_path / "out", save_probabilities=True, statistics=True)
    out = settings.output_dir
    run_evaluation(IntensityOracle(), [first], settings)
    alone = json.loads((out / "statistics.json").read_text())["first"]
    summary = run_evaluation(IntensityOracle(), [first, second], settings)  # a scan was added to the folder
    both = json.loads((out / "statistics.json").read_text())
    record_fault("predict --statistics rerun after adding a scan", survived=set(both) == {"first", "second"},
                 data_lost=2 - len(both))
    assert summary["skipped"] == ["first"] and set(both) == {"first", "second"} and both["first"] == alone
    (out / "statistics.json").unlink()  # killed between the last prediction and statistics.json
    summary = run_evaluation(IntensityOracle(), [first, second], settings)
    assert summary["skipped"] == [] and set(json.loads((out / "statistics.json").read_text())) == {"first", "second"}
    (out / "probabilities" / "second.nii.gz").unlink()  # killed between a prediction and its probability map
    summary = run_evaluation(IntensityOracle(), [first, second], settings)
    completed = (out / "probabilities" / "second.nii.gz").exists()
    record_fault("SIGKILL between a case's prediction and its probability map, then a rerun", survived=completed,
                 data_lost=int(not completed))
    assert summary["skipped"] == ["first"] and summary["cases"]["evaluated"] == 1 and completed
    probs = np.asarray(nib.load(out / "probabilities" / "second.nii.gz").dataobj)
    assert np.array_equal(probs.argmax(-1), np.asarray(nib.load(out / "predictions" / "second.nii.gz").dataobj))


def test_metrics_of_cases_not_in_a_rerun_are_kept(tmp_path):
    one = write_btcv_case(tmp_path / "data", "one", NON_RAS, 0)
    two = write_btcv_case(tmp_path / "data", "two", NON_RAS, 1)
    settings = settings_for(get_task("btcv"), tmp_path / "out")
    run_evaluation(IntensityOracle(), [one, two], settings)
    before = rows_of(settings.output_dir)
    run_evaluation(IntensityOracle(), [two], settings)  # a rerun on part of the folder
    after = rows_of(settings.output_dir)
    kept = sorted(map(str, after)) == sorted(map(str, before))
    record_fault("evaluation rerun on one of two labelled cases", survived=kept,
                 data_lost=len(before) - len(after))
    assert {r["case"] for r in after} == {"one", "two"} and kept
