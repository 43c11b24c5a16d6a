"""Reliability under attack: one test per attack class that once went wrong.

1 stale cached training data · 2 transient SOLF failures remembered as permanent · 3 two runs in
one output folder · 4 SOLF workers orphaned by a SIGTERM · 5 resources spent on untrusted files ·
6 quadratic evaluation bookkeeping (5 and 6 in test_reliability_resources.py) · 7 tracebacks
instead of messages · 8 silent skips and coercions. Each test records its attack in the fault
report (tests/faults_report.py).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import swinbob.infer.cli as eval_cli
import swinbob.train.cli as train_cli
from faults_report import handled, record_class, record_fault, record_input, refused
from swinbob.checkpoint import CheckpointError
from swinbob.data.transforms import DataConfig, eval_transforms
from swinbob.errors import ConfigError
from swinbob.files import NiftiError, atomic_write_text, folder_lock, load_nifti_header, write_nifti
from swinbob.data.inputs import folder_cases, root_cause
from swinbob.data.loaders import DatalistError, load_splits, make_dataset
from swinbob.data.phantoms import write_cohort
from swinbob.solf import outputs as solf_outputs
from swinbob.solf.cli import organ_filtering_entry
from swinbob.tasks import get_task
from swinbob.train.state import restore_training

from test_eval_cli import btcv_folder
from tiny import TINY_TRAIN_FLAGS, WIDE_ROI, tiny_flags

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]
REPO = Path(__file__).resolve().parents[1]
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
TINY_TRAIN = [*TINY_TRAIN_FLAGS, "--workers=0", "--num_samples=1", "--warmup_epochs=0", "--max_epochs=1", "--max_steps_per_epoch=1"]


CLASS_OF = {
    "test_a_label_replaced_in_place_is_not_served_from_the_disk_cache": "1 silent stale training data",
    "test_a_scan_that_ran_out_of_memory_is_measured_again_on_the_next_run": "2 transient failures remembered",
    "test_failures_recorded_by_an_earlier_run_are_summarised_at_warning_level": "2 transient failures remembered",
    "test_evaluation_into_a_folder_in_use_is_refused_with_the_pid": "3 two runs, one output folder",
    "test_solf_into_an_output_or_report_folder_in_use_is_refused": "3 two runs, one output folder",
    "test_training_into_a_log_dir_in_use_is_refused": "3 two runs, one output folder",
    "test_sigterm_to_the_solf_main_process_alone_ends_its_workers_too": "4 orphaned workers",
    "test_a_checkpoint_asking_for_a_huge_model_is_refused_before_building_it": "5 resources on untrusted files",
    "test_a_deflate_bomb_checkpoint_is_refused_from_its_zip_directory": "5 resources on untrusted files",
    "test_an_analyze_pair_whose_header_claims_2_gb_is_refused_from_the_header": "5 resources on untrusted files",
    "test_the_voxel_limit_is_set_by_flag": "5 resources on untrusted files",
    "test_evaluation_appends_case_records_and_writes_the_summary_once": "6 quadratic bookkeeping",
    "test_an_interrupted_evaluation_still_writes_its_summary": "6 quadratic bookkeeping",
    "test_a_read_only_output_dir_is_a_configuration_error": "7 tracebacks instead of messages",
    "test_a_read_only_log_dir_is_a_configuration_error": "7 tracebacks instead of messages",
    "test_an_output_dir_below_a_file_is_a_configuration_error": "7 tracebacks instead of messages",
    "test_a_full_disk_in_solf_stops_with_a_message_and_exit_1": "7 tracebacks instead of messages",
    "test_resume_with_another_optimizer_names_both": "7 tracebacks instead of messages",
    "test_malformed_datalists_are_named_in_one_line": "7 tracebacks instead of messages",
    "test_label_maps_are_integers_and_inline_maps_are_never_file_names": "8 silent skips and coercions",
    "test_a_2d_image_is_named_before_it_reaches_the_network": "7 tracebacks instead of messages",
    "test_unreadable_solf_inputs_are_listed_not_skipped": "8 silent skips and coercions",
    "test_solf_with_an_unwritable_labels_folder_stops_before_any_work": "8 silent skips and coercions",
    "test_a_legal_long_file_name_is_written_despite_its_longer_temporary_name": "8 silent skips and coercions",
    "test_links_fifos_and_analyze_pairs_in_an_input_dir_are_named": "8 silent skips and coercions",
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
def solf_cohort(tmp_path_factory) -> Path:
    return write_cohort("ukbob", tmp_path_factory.mktemp("rel_solf"), 6, shape=(40, 40, 48), seed=5).parent / "labelsTr"


@pytest.fixture(scope="module")
def btcv(tmp_path_factory) -> Path:
    return write_cohort("btcv", tmp_path_factory.mktemp("rel_btcv"), 2, shape=(32, 32, 40)).parent


def _solf(input_dir: Path, output_dir: Path, *extra: str) -> int:
    return organ_filtering_entry(["--input_dir", str(input_dir), "--output_dir", str(output_dir), "--workers", "1",
                                  "--no_figure", "--log_level", "WARNING", *extra])


def _datalist_labels(output_dir: Path) -> set[str]:
    dataset = json.loads((output_dir / "dataset.json").read_text())
    return {Path(e["label"]).name for e in dataset["training"] + dataset["validation"]}


def run_unprivileged(function) -> object:
    """``function()`` in a forked child that cannot write where only root could (uid 65534 when run
    as root, as a read-only mount would refuse us); its JSON-able result comes back through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            result = function()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as text
            result = f"uncaught {type(exc).__name__}: {exc}"
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def _collecting_main(main, argv: list[str], **kwargs) -> tuple[int, str]:
    """``main(argv)`` with the swinbob log collected (for :func:`run_unprivileged` children)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("swinbob").addHandler(handler)
    try:
        return main(argv, **kwargs), "\n".join(messages)
    finally:
        logging.getLogger("swinbob").removeHandler(handler)


@pytest.fixture
def shared_tmp():
    """A temporary folder every user can read (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="swinbob-rel-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


# ----------------------------------------------------------------------------------------------
# 1. Silent stale training data
# ----------------------------------------------------------------------------------------------

def test_a_label_replaced_in_place_is_not_served_from_the_disk_cache(tmp_path, caplog):
    image = np.zeros((32, 32, 32), np.float32)
    image[4:28, 4:28, 4:28] = 100.0
    label = np.zeros(image.shape, np.uint8)
    label[8:20, 8:20, 8:20] = 6
    write_nifti(tmp_path / "img.nii.gz", image, AFFINE)
    write_nifti(tmp_path / "label.nii.gz", label, AFFINE)
    task = get_task("btcv")
    transform = eval_transforms(task, DataConfig.from_task(task, spacing=(2.0, 2.0, 2.0)))
    entries = [{"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "label.nii.gz")}]
    first = make_dataset(entries, transform, cache_dir=tmp_path / "cache")[0]["label"]
    assert int((first == 6).sum()) == 12**3
    write_nifti(tmp_path / "label.nii.gz", np.zeros_like(label), AFFINE)  # a SOLF rerun rewrites it in place
    caplog.set_level(logging.WARNING, logger="swinbob")
    second = make_dataset(entries, transform, cache_dir=tmp_path / "cache")[0]["label"]
    stale = int((second == 6).sum())
    record_fault("label file replaced in place between two --cache_dir runs", survived=stale == 0, data_lost=int(stale > 0))
    assert stale == 0
    assert "1 file(s) changed since they were cached" in caplog.text and "label.nii.gz" in caplog.text


# ----------------------------------------------------------------------------------------------
# 2. Transient SOLF failures remembered as permanent
# ----------------------------------------------------------------------------------------------

class _OutOfMemory:
    """nibabel's array proxy, except that reading the voxels runs out of memory."""

    def __init__(self, proxy) -> None:
        self._proxy = proxy

    def __getattr__(self, name):
        return getattr(self._proxy, name)

    def __array__(self, *args, **kwargs):
        raise MemoryError


def test_a_scan_that_ran_out_of_memory_is_measured_again_on_the_next_run(solf_cohort, tmp_path, monkeypatch, caplog):
    real_load = nib.load

    def low_memory_for_case_1(path, *args, **kwargs):
        img = real_load(path, *args, **kwargs)
        if "ukbob_0001" in str(path):
            img._dataobj = _OutOfMemory(img._dataobj)
        return img

    out = tmp_path / "out"
    caplog.set_level(logging.WARNING)
    with monkeypatch.context() as patch:
        patch.setattr(nib, "load", low_memory_for_case_1)
        assert _solf(solf_cohort, out) == 0
    failures = json.loads((out / "report" / "failures.json").read_text())
    assert [f["case_id"] for f in failures] == ["ukbob_0001"] and "out of memory" in failures[0]["reason"]
    assert "ukbob_0001.nii.gz" not in _datalist_labels(out)
    caplog.clear()
    assert _solf(solf_cohort, out) == 0  # memory is back: the scan is measured, not remembered as failed
    retried = "ukbob_0001.nii.gz" in _datalist_labels(out)
    record_fault("SOLF scan out of memory once, then rerun", survived=retried, data_lost=int(not retried))
    assert retried and json.loads((out / "report" / "failures.json").read_text()) == []


def test_failures_recorded_by_an_earlier_run_are_summarised_at_warning_level(solf_cohort, tmp_path, caplog):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in solf_cohort.glob("*.nii.gz"):
        os.symlink(path, inputs / path.name)
    (inputs / "ukbob_0099.nii.gz").write_bytes(b"not a NIfTI file")
    assert _solf(inputs, tmp_path / "out") == 0
    caplog.clear()
    caplog.set_level(logging.WARNING)
    assert _solf(inputs, tmp_path / "out") == 0  # nothing measured again: the failure comes from the logs
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    record_input("SOLF rerun", "failure recorded by an earlier run -> SOLF rerun", handled(warnings[0][:80] if warnings else "silent"))
    assert any("1 scan(s) failed and are left out of dataset.json" in w and "ukbob_0099" in w for w in warnings)


# ----------------------------------------------------------------------------------------------
# 3. Two runs, one output folder
# ----------------------------------------------------------------------------------------------

def test_evaluation_into_a_folder_in_use_is_refused_with_the_pid(tmp_path, monkeypatch, caplog):
    folder = btcv_folder(tmp_path)
    out = tmp_path / "out"
    argv = ["--json_list", str(folder / "data" / "BTCV" / "dataset_0.json"), "--data_dir", str(folder / "data" / "BTCV"),
            "--pretrained_dir", str(folder / "pretrained_models"), *tiny_flags(WIDE_ROI),
            "--no_etta", "--workers=0", "--output_dir", str(out)]
    with folder_lock(out, "--output_dir"):  # run A holds it (flock: another open file, as another process)
        status = eval_cli.main(argv, default_task="btcv")
    message = _errors(caplog)
    record_input("concurrent runs", "second evaluation into one --output_dir", refused(message, strip=tmp_path))
    assert status == 2 and f"is in use by PID {os.getpid()}" in message and str(out) in message
    assert not (out / "summary.json").exists()
    assert eval_cli.main(argv, default_task="btcv") == 0  # once A is done, the folder is free again


def test_solf_into_an_output_or_report_folder_in_use_is_refused(solf_cohort, tmp_path, caplog):
    out, report = tmp_path / "out", tmp_path / "report"
    with folder_lock(out):
        assert _solf(solf_cohort, out) == 2
    with folder_lock(report):
        assert _solf(solf_cohort, out, "--report", str(report)) == 2
    message = _errors(caplog)
    record_input("concurrent runs", "second SOLF run into one --output_dir / --report", refused(message, strip=tmp_path))
    assert message.count(f"in use by PID {os.getpid()}") == 2 and str(report) in message
    assert not (out / "dataset.json").exists()


def test_training_into_a_log_dir_in_use_is_refused(btcv, tmp_path, caplog):
    logdir = tmp_path / "run"
    argv = [f"--json_list={btcv / 'dataset.json'}", f"--data_dir={btcv}", f"--logdir={logdir}", *TINY_TRAIN]
    with folder_lock(logdir):
        status = train_cli.main(argv, default_task="btcv")
    message = _errors(caplog)
    record_input("concurrent runs", "second training into one --logdir", refused(message, strip=tmp_path))
    assert status == 2 and f"--logdir {logdir} is in use by PID {os.getpid()}" in message
    assert not (logdir / "last.pt").exists()


# ----------------------------------------------------------------------------------------------
# 4. Orphaned SOLF workers
# ----------------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_sigterm_to_the_solf_main_process_alone_ends_its_workers_too(tmp_path):
    labels = write_cohort("ukbob", tmp_path / "cohort", 16, shape=(48, 48, 56), seed=1).parent / "labelsTr"
    command = [sys.executable, str(REPO / "UKBOB" / "filtering" / "organ_filtering.py"), "--input_dir", str(labels),
               "--output_dir", str(tmp_path / "out"), "--workers", "2", "--no_figure"]
    job = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, workers = time.monotonic() + 120, []
    while len(workers) < 2 and job.poll() is None and time.monotonic() < deadline:
        workers = _children(job.pid)
        time.sleep(0.01)
    assert len(workers) == 2, "the pool never started"
    job.send_signal(signal.SIGTERM)  # the main process only, as subprocess.Popen.terminate() does
    try:
        job.communicate(timeout=30)  # hung for ever: orphaned workers kept the pipes open
        hung = False
    except subprocess.TimeoutExpired:
        hung = True
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in workers if _alive(p)]
    for pid in left:  # do not leave them behind if the test fails
        os.kill(pid, signal.SIGKILL)
    if hung:
        job.communicate(timeout=30)
    record_fault("SIGTERM to the SOLF main process only (2 pool workers)", survived=not hung and not left)
    assert not hung and left == []


# ----------------------------------------------------------------------------------------------
# 7. Messages, not tracebacks
# ----------------------------------------------------------------------------------------------

def test_a_read_only_output_dir_is_a_configuration_error(shared_tmp):
    read_only = shared_tmp / "read_only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    argv = ["--input_dir", str(shared_tmp), "--output_dir", str(read_only / "out"), "--pretrained_dir", str(shared_tmp)]
    status, messages = run_unprivileged(lambda: _collecting_main(eval_cli.main, argv, default_task="btcv"))
    record_input("unwritable outputs", "evaluate --output_dir inside a read-only folder", refused(messages, strip=shared_tmp))
    assert status == 2 and f"--output_dir {read_only / 'out'} cannot be written" in messages


def test_a_read_only_log_dir_is_a_configuration_error(shared_tmp):
    data = write_cohort("btcv", shared_tmp / "cohort", 2, shape=(32, 32, 40)).parent
    read_only = shared_tmp / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    argv = [f"--json_list={data / 'dataset.json'}", f"--data_dir={data}", f"--logdir={read_only / 'run'}", *TINY_TRAIN]
    status, messages = run_unprivileged(lambda: _collecting_main(train_cli.main, argv, default_task="btcv"))
    record_input("unwritable outputs", "training --logdir inside a read-only folder", refused(messages, strip=shared_tmp))
    assert status == 2 and f"--logdir {read_only / 'run'} cannot be written" in messages


def test_an_output_dir_below_a_file_is_a_configuration_error(tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    status = eval_cli.main(["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "file" / "out"),
                            "--pretrained_dir", str(tmp_path)], default_task="btcv")
    message = _errors(caplog)
    record_input("unwritable outputs", "evaluate --output_dir below a file", refused(message, strip=tmp_path))
    assert status == 2 and f"{tmp_path / 'file'} is a file, not a folder" in message


def test_a_full_disk_in_solf_stops_with_a_message_and_exit_1(solf_cohort, tmp_path, monkeypatch, caplog):
    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(solf_outputs, "write_nifti", full_disk)
    status = _solf(solf_cohort, tmp_path / "out")
    message = _errors(caplog)
    record_input("full disk", "ENOSPC writing a cleaned label -> SOLF", refused(message, strip=tmp_path))
    assert status == 1 and "No space left on device" in message and "free some space and run again" in message
    assert "labelsTr" in message


def test_resume_with_another_optimizer_names_both(tmp_path):
    model = torch.nn.Linear(3, 2)
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    adamw.step()
    checkpoint = {"model": model.state_dict(), "optimizer": adamw.state_dict(), "epoch": 1}
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(CheckpointError) as caught:
        restore_training(checkpoint, "last.pt", model, sgd, scaler, {})
    record_input("resume", "--resume --optim_name=sgd over an AdamW checkpoint", refused(caught.value))
    assert "last.pt was saved by another optimizer than --optim_name sgd" in str(caught.value)


@pytest.mark.parametrize(("content", "expected"), [
    ([{"image": "a.nii.gz"}], "must be a JSON object"),
    ({"training": [{"image": "a.nii.gz", "label": "b.nii.gz"}], "validation": {}}, "'validation' must be a list"),
    ({"training": [{"image": "a.nii.gz", "label": "b.nii.gz", "fold": None}]}, '"fold": null, which is not an integer'),
    ({"training": [{"image": "a.nii.gz", "label": "b.nii.gz", "fold": "one"}]}, '"fold": "one", which is not an integer'),
])
def test_malformed_datalists_are_named_in_one_line(tmp_path, content, expected):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DatalistError) as caught:
        load_splits(path, tmp_path, fold=0)
    record_input("malformed datalist", f"{json.dumps(content)[:50]} -> load_splits", refused(caught.value, strip=tmp_path))
    assert expected in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ('{"6": 1e999}', "dataset ID inf is not an integer"),
    ('{"6": 6.9}', "dataset ID 6.9 is not an integer"),
    ('{"6": true}', "dataset ID true is not an integer"),
    (json.dumps({str(k): k % 13 + 1 for k in range(1, 31)}), None),  # inline, longer than a file name may be
])
def test_label_maps_are_integers_and_inline_maps_are_never_file_names(text, expected):
    task = get_task("btcv")
    if expected is None:
        assert len(text) > 255 and len(eval_cli.parse_label_map(text, task, 73)) == 30
        record_input("label map", "inline --label_map of 30 entries", handled("read as JSON, not as a file name"))
        return
    with pytest.raises(ConfigError) as caught:
        eval_cli.parse_label_map(text, task, 73)
    record_input("label map", f"--label_map '{text}'", refused(caught.value))
    assert expected in str(caught.value)


def test_a_2d_image_is_named_before_it_reaches_the_network(tmp_path):
    write_nifti(tmp_path / "flat.nii.gz", np.ones((40, 40), np.float32), AFFINE)
    task = get_task("btcv")
    with pytest.raises(RuntimeError) as caught:  # MONAI wraps it; evaluation reports the root cause
        eval_transforms(task, DataConfig.from_task(task), with_label=False)({"image": str(tmp_path / "flat.nii.gz")})
    cause = root_cause(caught.value)
    record_input("untrusted image", "2D image -> evaluation preprocessing", refused(cause, strip=tmp_path))
    assert f"NiftiError: {tmp_path / 'flat.nii.gz'}: a 2D image" in cause


# ----------------------------------------------------------------------------------------------
# 8. No silent skips, no silent coercions
# ----------------------------------------------------------------------------------------------

def test_unreadable_solf_inputs_are_listed_not_skipped(solf_cohort, tmp_path, caplog):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in solf_cohort.glob("*.nii.gz"):
        os.symlink(path, inputs / path.name)
    os.symlink(tmp_path / "gone.nii.gz", inputs / "dangling.nii.gz")
    os.mkfifo(inputs / "pipe.nii.gz")
    (inputs / "pair.hdr").write_bytes(nib.AnalyzeHeader().binaryblock)
    (inputs / "pair.img").write_bytes(b"")
    caplog.set_level(logging.WARNING)
    assert _solf(inputs, tmp_path / "out") == 0
    failures = {f["case_id"]: f for f in json.loads((tmp_path / "out" / "report" / "failures.json").read_text())}
    for name, failure in failures.items():
        record_input("silent skips", f"{name} among SOLF inputs", refused(failure["reason"], strip=tmp_path))
    assert set(failures) == {"dangling.nii.gz", "pipe.nii.gz", "pair.hdr", "pair.img"}
    assert "symbolic link to a missing file" in failures["dangling.nii.gz"]["reason"]
    assert "a FIFO" in failures["pipe.nii.gz"]["reason"] and ".hdr/.img" in failures["pair.hdr"]["reason"]
    assert all(f["stage"] == "inputs" for f in failures.values())
    assert "input not read" in caplog.text


def test_solf_with_an_unwritable_labels_folder_stops_before_any_work(solf_cohort, tmp_path, caplog):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "labelsTr").write_text("a file where the folder should be")
    status = _solf(solf_cohort, tmp_path / "out")
    message = _errors(caplog)
    record_input("unwritable outputs", "SOLF labelsTr not writable", refused(message, strip=tmp_path))
    assert status == 2 and "labelsTr" in message and "is a file" in message
    assert not (tmp_path / "out" / "features").exists()


def test_a_legal_long_file_name_is_written_despite_its_longer_temporary_name(tmp_path):
    name = "c" * 240 + ".nii.gz"  # 247 bytes: legal; its temporary name would be over 255
    write_nifti(tmp_path / name, np.ones((4, 4, 4), np.uint8), AFFINE)
    atomic_write_text(tmp_path / ("t" * 250 + ".json"), "{}")
    assert (tmp_path / name).is_file() and nib.load(tmp_path / name).shape == (4, 4, 4)
    record_input("silent skips", "247-byte output file name -> atomic write", handled("written"))


def test_links_fifos_and_analyze_pairs_in_an_input_dir_are_named(tmp_path, caplog):
    write_nifti(tmp_path / "scan.nii.gz", np.ones((8, 8, 8), np.float32), AFFINE)
    os.symlink(tmp_path / "gone.nii.gz", tmp_path / "dangling.nii.gz")
    os.mkfifo(tmp_path / "pipe.nii.gz")
    (tmp_path / "pair.hdr").write_bytes(nib.AnalyzeHeader().binaryblock)
    caplog.set_level(logging.WARNING, logger="swinbob")
    cases = {c.name: c for c in folder_cases(tmp_path, ["image"])}
    assert set(cases) == {"scan", "dangling", "pipe"}  # each becomes a case that fails with its reason
    reasons = {}
    for name in ("dangling", "pipe"):
        with pytest.raises(NiftiError) as caught:
            load_nifti_header(cases[name].image[0])
        reasons[name] = str(caught.value)
        record_input("silent skips", f"{name}.nii.gz in --input_dir", refused(caught.value, strip=tmp_path))
    assert "a symbolic link to a missing file" in reasons["dangling"] and "not a regular file" in reasons["pipe"]
    assert "pair.hdr: not read (Analyze/NIfTI pairs" in caplog.text
