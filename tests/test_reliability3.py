"""Reliability, round three: one test per finding of the third attack round, by class.

1 silent wrong results and lost outputs · 2 allocations decided by a small input · 3 tracebacks
and wrong exit codes where the contract is one line and exit 2. Each test records its attack in
the fault report (tests/faults_report.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import swinbob.infer.cli as eval_cli
import swinbob.solf.cli as solf_cli
import swinbob.train.cli as train_cli
from custom_data import write_dataset
from faults_report import handled, record_class, record_fault, record_input, refused
from swinbob.checkpoint import CheckpointError, make_checkpoint
from swinbob.data.inputs import Case
from swinbob.data.loaders import entry_problems
from swinbob.data.transforms import DataConfig, eval_transforms
from swinbob.errors import ConfigError
from swinbob.files import NiftiError, load_nifti_header, resampled_shape, write_nifti
from swinbob.infer.cli import parse_label_map
from swinbob.infer.model_loading import stored_task
from swinbob.infer.predict import main as predict_main
from swinbob.limits import DEFAULTS, limit
from swinbob.model import build_model
from swinbob.solf.cases import body_volume
from swinbob.solf.labelsets import LabelSetError, load_label_set
from swinbob.solf.pool import die_with_parent
from swinbob.solf.previews import preview_name
from swinbob.train.state import run_config
from swinbob.data.phantoms import write_cohort
from swinbob.infer.evaluate import output_file, run_evaluation
from swinbob.tasks import get_task

from test_eval import NON_RAS, IntensityOracle, rows_of, settings_for, write_btcv_case

from test_reliability import run_unprivileged
from tiny import TINY_TRAIN_FLAGS, WIDE_ROI, tiny_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]
TINY_TRAIN = [*TINY_TRAIN_FLAGS, "--workers=0", "--num_samples=1", "--warmup_epochs=0", "--max_epochs=1", "--max_steps_per_epoch=1"]

WRONG = "1 silent wrong results, lost outputs"
ALLOC = "2 allocations decided by a small input"
TRACE = "3 tracebacks, wrong exit codes"
CLASS_OF: dict[str, str] = {
    "test_a_changed_spacing_or_window_trains_on_fresh_data_from_the_same_cache_dir": WRONG,
    "test_statistics_accumulate_over_reruns_and_a_half_done_case_is_completed": WRONG,
    "test_metrics_of_cases_not_in_a_rerun_are_kept": WRONG,
    "test_a_small_scan_whose_header_says_600_mm_voxels_is_refused_from_its_resampled_size": ALLOC,
    "test_label_ids_and_label_files_that_would_size_an_allocation_are_refused": ALLOC,
    "test_small_hostile_inputs_stay_within_an_address_space_limit": ALLOC,
    "test_a_malformed_dataset_json_stops_training_with_one_line_and_exit_2": TRACE,
    "test_an_invalid_checkpoint_task_is_refused_before_any_scan_is_read": TRACE,
    "test_an_invalid_limit_in_the_environment_is_an_error_naming_the_variable": TRACE,
    "test_a_malformed_label_table_is_one_line": TRACE,
    "test_nnunet_regions_in_a_label_table_are_skipped_not_turned_into_organs": TRACE,
    "test_a_rerun_whose_only_failure_was_already_a_failure_exits_as_the_first_run": TRACE,
    "test_a_permission_denied_scan_is_a_transient_failure_that_the_next_run_retries": WRONG,
    "test_long_organ_and_case_names_give_short_stable_file_names": TRACE,
    "test_an_empty_or_nan_body_mask_fails_its_scan_instead_of_being_replaced_or_counted": WRONG,
    "test_ctrl_c_in_solf_is_one_line_and_its_workers_ignore_it": TRACE,
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


# ----------------------------------------------------------------------------------------------
# 2. Allocations decided by a small input
# ----------------------------------------------------------------------------------------------

def _big_voxels(folder: Path, name: str = "big", zoom: float = 600.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).uniform(-100, 200, (16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([zoom, zoom, zoom, 1.0])), folder / f"{name}.nii.gz")
    return folder / f"{name}.nii.gz"


def test_a_small_scan_whose_header_says_600_mm_voxels_is_refused_from_its_resampled_size(tmp_path):
    path = _big_voxels(tmp_path)
    task = get_task("btcv")
    transform = eval_transforms(task, DataConfig.from_task(task), with_label=False)
    with pytest.raises(RuntimeError) as caught:  # MONAI wraps a transform's error
        transform({"image": str(path)})
    cause = caught.value.__cause__
    record_input("derived sizes", "16^3 scan of 600 mm voxels -> evaluation preprocessing", refused(cause, tmp_path))
    assert isinstance(cause, NiftiError) and str(path) in str(cause) and "(--max_voxels)" in str(cause) and "6400" in str(cause)
    problems = entry_problems({"image": str(path)}, task, require_label=False, read_images=False, spacing=(0.01,) * 3)
    assert len(problems) == 1 and "(--max_voxels)" in problems[0]  # training's datalist check, 0.01 mm target
    assert resampled_shape((16, 16, 16), np.diag([600.0, 600.0, 600.0, 1.0]), (1.5, 1.5, 2.0)) == (6400, 6400, 4800)
    flipped = np.array([[0, 0, -3.0, 0], [2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # file axes i, j, k: RAS y, z, x
    assert resampled_shape((10, 20, 30, 2), flipped, (1.0, 2.0, 0.5)) == (10 * 2 // 2, 20 * 1 // 0.5, 30 * 3 // 1, 2)


def _task_checkpoint(folder: Path, edit=None) -> Path:
    task = get_task("btcv")
    config = tiny_config(roi=WIDE_ROI)
    stored = run_config(task, config, DataConfig.from_task(task))
    if edit is not None:
        edit(stored["task_spec"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(make_checkpoint(build_model(config), stored), folder / "model.pt")
    return folder / "model.pt"


def test_label_ids_and_label_files_that_would_size_an_allocation_are_refused(tmp_path, monkeypatch):
    huge_id = {"0": "background", str(10**9): "organ"}
    with pytest.raises(CheckpointError) as caught:
        stored_task({"task_spec": {**get_task("btcv").to_dict(), "label_map": huge_id}})
    record_input("derived sizes", "checkpoint task_spec with label id 10^9 -> stored_task", refused(caught.value))
    assert "(--max_channels)" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_label_map("/dev/zero", get_task("btcv"), 14)
    record_input("derived sizes", "--label_map=/dev/zero -> evaluation", refused(caught.value))
    assert "/dev/zero" in str(caught.value) and "not a regular file" in str(caught.value)
    monkeypatch.setenv("SWINBOB_MAX_TABLE_MB", "1")
    table = tmp_path / "labels.csv"
    table.write_text("id,name\n" + "\n" * (2 * 2**20) + "1,liver\n")  # 2 MiB of blank rows
    with pytest.raises(LabelSetError) as caught:
        load_label_set(table)
    record_input("derived sizes", "2 MiB label table of blank rows (limit 1 MiB) -> SOLF --labels", refused(caught.value, tmp_path))
    assert str(table) in str(caught.value) and "(--max_table_mb)" in str(caught.value)


ADDRESS_SPACE_SCRIPT = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))
from swinbob.commands import main
from swinbob.solf.cases import body_volume
from swinbob.solf.labelsets import LabelSetError, load_label_set
from swinbob.solf.pool import die_with_parent
from swinbob.solf.previews import preview_name
for argv in json.loads(sys.argv[1]):
    if argv[0] == "labels":
        try:
            load_label_set(argv[1])
            status = 0
        except LabelSetError as exc:
            print("refused:", exc, file=sys.stderr)
            status = 2
    else:
        status = main(argv)
    print(f"=== exit {status}", file=sys.stderr, flush=True)
"""


def _micro_voxel_dataset(root: Path) -> Path:
    """Three tiny cases whose headers say 0.01 mm voxels but for one at 2 mm: ``--task auto`` takes
    the median spacing (0.01 mm) as its target, which would resample the 2 mm case to ~10^11 voxels."""
    datalist = write_dataset(root, "MRI", num_cases=3)
    for index in (0, 1):
        for path in (root / "imagesTr" / f"case{index}_0000.nii.gz", root / "labelsTr" / f"case{index}.nii.gz"):
            img = nib.load(path)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([0.01, 0.01, 0.01, 1.0])), path)
    return datalist


def test_small_hostile_inputs_stay_within_an_address_space_limit(tmp_path):
    """Each input of under 1 MB, run in a process whose address space is capped: a refusal naming the
    file or flag, never a MemoryError, a kill or an allocation attempt of the size they claim."""
    script = tmp_path / "capped.py"
    script.write_text(ADDRESS_SPACE_SCRIPT.replace("CAP_BYTES", str(6 * 2**30)))
    model = _task_checkpoint(tmp_path / "good")
    huge = _task_checkpoint(tmp_path / "huge", lambda spec: spec.update(label_map={"0": "background", str(10**9): "x"}))
    scans = _big_voxels(tmp_path / "in").parent
    csv_table = tmp_path / "cells.csv"
    csv_table.write_text("1," + "x" * 900_000 + "\n")
    micro = _micro_voxel_dataset(tmp_path / "micro")
    predict = ["predict", "-i", str(scans), "-m"]
    cases = {
        "16^3 scan of 600 mm voxels -> swinbob predict": ([*predict, str(model), "-o", str(tmp_path / "o1")], 1, "(--max_voxels)"),
        "task_spec label id 10^9 -> swinbob predict": ([*predict, str(huge), "-o", str(tmp_path / "o2")], 2, "(--max_channels)"),
        "900 kB label-table cell -> SOLF --labels": (["labels", str(csv_table)], 2, "not a CSV label table"),
        "headers of 0.01 mm voxels, no --space_* -> swinbob train --task auto": (
            ["train", "--task=auto", f"--json_list={micro}", f"--data_dir={micro.parent}", f"--logdir={tmp_path / 'run'}",
             "--max_epochs=1", "--workers=0", *TINY_TRAIN_FLAGS[:4]], 2, "(--max_voxels)"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    jobs = [argv if argv[0] == "labels" else [*argv, "--device=cpu"] for argv, _, _ in cases.values()]
    done = subprocess.run([sys.executable, str(script), json.dumps(jobs)], capture_output=True, text=True, timeout=300, env=env)
    outputs = (done.stdout + done.stderr).split("=== exit ")
    assert done.returncode == 0 and len(outputs) == len(cases) + 1, (done.returncode, outputs[-1][-3000:])
    for (description, (_, status, message)), text, after in zip(cases.items(), outputs[:-1], outputs[1:]):
        exit_status = int(after.split()[0])
        held = exit_status == status and message in text and "Traceback" not in text and "MemoryError" not in text
        record_input("address-space limit", description, refused(message) if held else f"exit {exit_status}")
        assert held, (description, exit_status, text[-2000:])


# ----------------------------------------------------------------------------------------------
# 3. Tracebacks and wrong exit codes where the contract is one line and exit 2
# ----------------------------------------------------------------------------------------------

def _edit_labels(content: dict, **labels) -> None:
    content["labels"] = {**content["labels"], **labels}


def _constant_ct(datalist: Path) -> None:
    for path in (datalist.parent / "imagesTr").glob("*.nii.gz"):
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.full(img.shape, 40.0, np.float32), img.affine), path)


DATASET_JSON = {
    "regions_class_order 5": (lambda c: c.update(labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3]},
                                                  regions_class_order=5), "'regions_class_order' must be a list"),
    "label value 1e999": (lambda c: _edit_labels(c, tumour=float("inf")), "is not an integer label value"),
    "10^5 labels": (lambda c: c.update(labels={"background": 0, **{f"l{i}": i for i in range(1, 10**5)}}), "(--max_channels)"),
    "10^6 labels (17 MB)": (lambda c: c.update(labels={"background": 0, **{f"l{i}": i for i in range(1, 10**6)}}),
                            "(--max_table_mb)"),
    "class 255 (the ignore value)": (lambda c: _edit_labels(c, tumour=255), "is the ignore value of cleaned labels"),
    "label value true": (lambda c: _edit_labels(c, tumour=True), "is not an integer label value"),
    "constant CT images": (None, "the training foreground is constant"),
}


@pytest.mark.parametrize("case", list(DATASET_JSON))
def test_a_malformed_dataset_json_stops_training_with_one_line_and_exit_2(case, tmp_path, caplog):
    edit, expected = DATASET_JSON[case]
    datalist = write_dataset(tmp_path / "data", "CT", num_cases=2)
    content = json.loads(datalist.read_text())
    if edit is None:
        _constant_ct(datalist)
    else:
        edit(content)
    datalist.write_text(json.dumps(content).replace("Infinity", "1e999"))
    argv = ["--task=auto", f"--json_list={datalist}", f"--data_dir={datalist.parent}", f"--logdir={tmp_path / 'run'}", *TINY_TRAIN]
    status = train_cli.main(argv)
    message = _errors(caplog)
    record_input("dataset.json", f"{case} -> main.py --task auto", refused(message, tmp_path))
    assert status == 2 and expected in message and len(message.splitlines()) == 1, message
    assert not (tmp_path / "run" / "last.pt").exists()


TASK_SPECS = {
    "intensity kind 'evil'": (lambda s: s["intensity"].update(kind="evil"), "intensity kind 'evil'"),
    "spacing -4": (lambda s: s.update(spacing=[-4.0, 1.5, 2.0]), "spacing"),
    "spacing 1e-4": (lambda s: s.update(spacing=[1e-4, 1e-4, 1e-4]), "spacing"),
    "NaN window": (lambda s: s["intensity"].update(a_min=float("nan")), "finite numbers"),
    "label id 255": (lambda s: s.update(label_map={**s["label_map"], 255: "x"}), "is the ignore value"),
    "label id 10^9": (lambda s: s.update(label_map={**s["label_map"], 10**9: "x"}), "(--max_channels)"),
    "10^4 input channels": (lambda s: s.update(channel_names=[f"c{i}" for i in range(10**4)]), "(--max_channels)"),
}


@pytest.mark.parametrize("case", list(TASK_SPECS))
def test_an_invalid_checkpoint_task_is_refused_before_any_scan_is_read(case, tmp_path, caplog, monkeypatch):
    edit, expected = TASK_SPECS[case]
    model = _task_checkpoint(tmp_path / "model", edit)
    scans = _big_voxels(tmp_path / "in", zoom=1.5).parent
    read: list[str] = []
    monkeypatch.setattr(eval_cli, "folder_cases", lambda *a, **k: read.append("scans listed") or [])
    status = predict_main(["-i", str(scans), "-o", str(tmp_path / "out"), "-m", str(model), "--device=cpu"], default_task="btcv")
    message = _errors(caplog)
    record_input("checkpoint task_spec", f"{case} -> swinbob predict", refused(message, tmp_path))
    assert status == 2 and str(model) in message and expected in message and len(message.splitlines()) == 1, message
    assert not read and not (tmp_path / "out" / "predictions").exists()


@pytest.mark.parametrize("value", ["abc", "1e3", "0", "-5", " "])
def test_an_invalid_limit_in_the_environment_is_an_error_naming_the_variable(value, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("SWINBOB_MAX_VOXELS", value)
    (tmp_path / "in").mkdir()
    status = predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "none.pt")])
    message = _errors(caplog)
    record_input("environment limits", f"SWINBOB_MAX_VOXELS={value!r} -> swinbob predict",
                 refused(message, tmp_path) if value.strip() else handled("blank: not set, the default applies"))
    if value.strip():
        assert status == 2 and "SWINBOB_MAX_VOXELS" in message and "--max_voxels" not in message
    else:  # an empty variable means "not set"
        assert limit("max_voxels") == DEFAULTS["max_voxels"]
    monkeypatch.setenv("SWINBOB_MAX_VOXELS", "123")
    assert limit("max_voxels") == 123


LABEL_TABLES = {
    "a name of 131,073 characters": ('{"labels": {"1": "%s"}}' % ("x" * 131_073), "characters (at most"),
    "true as a label ID": ('{"labels": {"liver": true}}', "not an integer label value"),
    "a list as a Decathlon name": ('{"labels": {"1": ["liver"]}}', "names are text"),
    "a NUL byte in a CSV name": ("1,liv\0er\n", "non-printable characters"),
    "ID 99999999999 in a CSV": ("99999999999,liver\n", "outside 1..254"),
}


@pytest.mark.parametrize("case", list(LABEL_TABLES))
def test_a_malformed_label_table_is_one_line(case, tmp_path):
    text, expected = LABEL_TABLES[case]
    path = tmp_path / ("labels.csv" if "CSV" in case else "labels.json")
    path.write_text(text)
    with pytest.raises(LabelSetError) as caught:
        load_label_set(path)
    record_input("label tables", f"{case} -> SOLF --labels", refused(caught.value, tmp_path))
    assert str(path) in str(caught.value) and expected in str(caught.value) and len(str(caught.value)) < 400


def test_nnunet_regions_in_a_label_table_are_skipped_not_turned_into_organs(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2, "whole": [1, 2]}}))
    table = load_label_set(path)
    record_input("label tables", "nnU-Net regions in dataset.json -> SOLF --labels", handled(f"{sorted(table.values())}"))
    assert table == {0: "background", 1: "liver", 2: "tumour"}


def test_a_rerun_whose_only_failure_was_already_a_failure_exits_as_the_first_run(tmp_path, caplog):
    model = _task_checkpoint(tmp_path / "model")
    scans = tmp_path / "in"
    _big_voxels(scans, "good", zoom=1.5)
    whole = (scans / "good.nii.gz").read_bytes()
    (scans / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    argv = ["-i", str(scans), "-o", str(tmp_path / "out"), "-m", str(model), "--device=cpu"]
    first = predict_main(argv, default_task="btcv")
    second = predict_main(argv, default_task="btcv")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    record_input("reruns", "one good + one truncated scan, same predict command twice",
                 handled(f"exit {first} then {second}"))
    assert (first, second) == (0, 0) and summary["skipped"] == ["good"] and summary["cases"]["failed"] == 1


def test_a_permission_denied_scan_is_a_transient_failure_that_the_next_run_retries(tmp_path):
    """Both ways a scan can be refused: the file itself (nibabel reports "not NIfTI") and a folder on
    its path (``Path.is_file`` raises); both are transient, as SOLF's retry on the next run needs."""
    shared = Path(tempfile.mkdtemp(prefix="swinbob_eacces_"))  # pytest's own tmp folders are private to root
    try:
        shared.chmod(0o755)
        locked = _big_voxels(shared / "open", "locked", zoom=1.5)
        locked.chmod(0o000)
        (shared / "open").chmod(0o755)
        hidden = _big_voxels(shared / "closed", "hidden", zoom=1.5)
        (shared / "closed").chmod(0o700)

        def classify() -> list[list[str]]:
            answers = []
            for path in (locked, hidden):
                try:
                    load_nifti_header(path)
                    answers.append(["read", ""])
                except NiftiError as exc:
                    answers.append([type(exc).__name__, str(exc)])
            return answers

        answer = run_unprivileged(classify)
    finally:
        shutil.rmtree(shared)
    assert isinstance(answer, list), answer
    for (kind, message), what in zip(answer, ("label file without read permission", "label file in a closed folder")):
        record_input("reruns", f"{what} -> SOLF pass 1", refused(message, shared))
        assert kind == "TransientReadError" and "permission denied" in message, message


def test_long_organ_and_case_names_give_short_stable_file_names(tmp_path):
    organ = "o" * 250  # a legal 250-byte organ name
    first, second = preview_name("case", 7, organ), preview_name("case", 7, organ[:-1] + "p")
    written = tmp_path / first
    written.write_bytes(b"png")  # the file system accepts it
    record_input("long names", "250-byte organ name -> SOLF preview file", handled(f"{len(first)}-byte name"))
    assert len(first.encode()) <= 255 and first.endswith(".png") and first == preview_name("case", 7, organ)
    assert first != second and first.startswith("case__007_ooo")
    assert preview_name("case", 7, "liver") == "case__007_liver.png"  # short names are unchanged
    case = "é" * 126  # 252 bytes: with ".nii.gz" over the limit, cut at a character boundary
    path = output_file(tmp_path, case, ".nii.gz")
    path.write_bytes(b"")
    assert len(path.name.encode()) <= 255 and path.name.endswith(".nii.gz") and path == output_file(tmp_path, case, ".nii.gz")
    assert output_file(tmp_path, "case", ".nii.gz") == tmp_path / "case.nii.gz"


def test_an_empty_or_nan_body_mask_fails_its_scan_instead_of_being_replaced_or_counted(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    body = np.zeros((8, 8, 8), np.float32)
    body[2:6, 2:6, 2:6] = 1
    masks = {"good": body, "all zero": np.zeros_like(body), "NaN": np.where(body > 0, np.nan, 0).astype(np.float32)}
    answers = {}
    for name, mask in masks.items():
        path = tmp_path / f"{name.replace(' ', '_')}.nii.gz"
        write_nifti(path, mask, affine)
        try:
            answers[name] = body_volume(str(path), (8, 8, 8), affine)
        except NiftiError as exc:
            answers[name] = str(exc)
            record_input("body masks", f"{name} body mask -> SOLF --body_dir", refused(exc, tmp_path))
    assert answers["good"] == pytest.approx(64 * 8.0)  # 4^3 voxels of 8 mm^3
    assert "all_zero.nii.gz" in answers["all zero"] and "empty" in answers["all zero"]
    assert "NaN.nii.gz" in answers["NaN"] and "NaN" in answers["NaN"]


def test_ctrl_c_in_solf_is_one_line_and_its_workers_ignore_it(tmp_path, monkeypatch, caplog):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(solf_cli, "run_solf", interrupted)
    status = solf_cli.organ_filtering_entry(["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"),
                                             "--log_level", "WARNING"])
    message = _errors(caplog)
    record_input("interrupts", "Ctrl-C during SOLF -> organ_filtering.py", refused(message, tmp_path))
    assert status == 4 and message == "interrupted (Ctrl-C): finished scans are kept; the same command resumes"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a pool worker: its initializer runs, then Ctrl-C reaches the whole process group
        os.close(read)
        die_with_parent(os.getppid())
        os.write(write, str(signal.getsignal(signal.SIGINT) is signal.SIG_IGN).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        ignored = pipe.read()
    os.waitpid(pid, 0)
    assert ignored == "True"
