"""Inference under faults: a CUDA out-of-memory error (simulated: these machines have no GPU) while
summing windows and during ETTA, cases that fail in every way the run can meet, the evaluation
killed while writing a prediction, and output names built from hostile input names.

Users rely on: one bad case never stops the others and is listed with its reason; a file under
its final name is always complete; a rerun finishes what a killed run left; nothing is written
outside the output folder, whatever the input files or datalist cases are called.

The command line runs a tiny Swin-UNETR (feature_size 12, one 32x32x64 window per case) without
ETTA; the kill runs it in a subprocess started as ``python tests/test_faults_infer.py FAULT ARGS``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import swinbob.infer.cli as eval_cli
import swinbob.infer.evaluate as evaluate
import swinbob.infer.window as window
from faults_report import handled, record_fault, record_input, refused
from swinbob.checkpoint import make_checkpoint, save_checkpoint
from swinbob.data.transforms import DataConfig
from swinbob.files import stale_temp_files
from swinbob.model import build_model
from swinbob.data.phantoms import write_cohort
from swinbob.tasks import get_task
from swinbob.train.state import run_config
from tiny import tiny_config

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[1]
BTCV = get_task("btcv")
MODEL = tiny_config()
DATA = DataConfig.from_task(BTCV, spacing=(4.0, 4.0, 4.0))
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cuda_oom() -> torch.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 11.72 GiB (simulated)")


# ----------------------------------------------------------------------------------------------
# Fault injection in the subprocess (the runner at the end of this file)
# ----------------------------------------------------------------------------------------------

def install_fault(fault: str) -> None:
    """``kill_before_replace:NAME``: SIGKILL this process when the finished temporary file of
    output ``NAME`` is about to be renamed onto its final name."""
    kind, _, name = fault.partition(":")
    if kind != "kill_before_replace":
        raise SystemExit(f"unknown fault {fault!r}")
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """``model.pt`` of an untrained tiny network with its run config (spacing 4 mm: one window per case)."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_checkpoint(folder / "model.pt", make_checkpoint(build_model(MODEL), run_config(BTCV, MODEL, DATA), epoch=1))
    return folder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Five BTCV phantoms, every one in the evaluated ("validation") split."""
    json_path = write_cohort("btcv", tmp_path_factory.mktemp("infer_faults"), 5, shape=(40, 40, 32))
    datalist = json.loads(json_path.read_text())
    datalist["validation"] = sorted(datalist["training"] + datalist["validation"], key=lambda e: e["image"])
    json_path.write_text(json.dumps(datalist))
    return json_path.parent


def _args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [f"--pretrained_dir={model_dir}", "--pretrained_model_name=model.pt", f"--output_dir={out}", "--no_etta",
            "--workers=0", *extra]


def _datalist_args(cohort: Path, model_dir: Path, out: Path, *extra: str) -> list[str]:
    return _args(model_dir, out, f"--json_list={cohort / 'dataset.json'}", f"--data_dir={cohort}", *extra)


def _complete(path: Path) -> bool:
    try:
        np.asanyarray(nib.load(path).dataobj)
    except Exception:  # noqa: BLE001 - any failure means a partial file
        return False
    return True


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Out of memory
# ----------------------------------------------------------------------------------------------

def test_a_cuda_oom_while_summing_windows_on_the_gpu_retries_on_the_cpu_with_a_warning(monkeypatch, caplog):
    torch.manual_seed(1)
    model, image = build_model(MODEL).eval(), torch.rand(1, 1, 40, 36, 70)
    settings = window.WindowSettings(MODEL.roi, sw_batch_size=2)
    with torch.no_grad():
        expected = window.predict_logits(model, image, settings)

    real_window, attempts = window._sliding_window, []

    def window_on_a_full_gpu(model, image, settings, compute, accumulate):
        attempts.append(accumulate.type)
        if accumulate.type == "cuda":
            raise _cuda_oom()
        return real_window(model, image, settings, compute, accumulate)
    # As on a GPU whose free memory looked sufficient: auto accumulation picks the GPU first.
    monkeypatch.setattr(window, "accumulation_device", lambda *args: torch.device("cuda"))
    monkeypatch.setattr(window, "_sliding_window", window_on_a_full_gpu)
    with torch.no_grad():
        logits = window.predict_logits(model, image, settings)
    warned = "retrying with CPU accumulation" in caplog.text
    same = logits.device.type == "cpu" and torch.equal(logits, expected)
    record_fault("CUDA out of memory while summing windows on the GPU (simulated): CPU accumulation",
                 survived=warned and same and attempts == ["cuda", "cpu"])
    assert attempts == ["cuda", "cpu"] and warned and same


def test_a_cuda_oom_during_etta_keeps_the_source_prediction(monkeypatch, caplog):
    torch.manual_seed(2)
    model, image = build_model(MODEL).eval(), torch.rand(1, 40, 36, 70)
    settings = evaluate.EvalSettings(task=BTCV, data=DATA, window=window.WindowSettings(MODEL.roi),
                                     output_dir=Path("unused"), methods=(evaluate.NO_ETTA, evaluate.ETTA))

    def etta_on_a_full_gpu(*args, **kwargs):
        raise _cuda_oom()
    monkeypatch.setattr(evaluate, "etta_predict", etta_on_a_full_gpu)
    labels, record = evaluate.predict_case(model, image, settings)
    kept = torch.equal(labels[evaluate.ETTA], labels[evaluate.NO_ETTA]) and not record["applied"]
    record_fault("CUDA out of memory during ETTA (simulated): source prediction kept",
                 survived=kept and "out of memory during ETTA" in caplog.text)
    assert kept and record["fallback"] == "out of memory during adaptation"


# ----------------------------------------------------------------------------------------------
# Failing cases
# ----------------------------------------------------------------------------------------------

def test_failing_cases_do_not_stop_the_others_and_each_is_listed_with_its_reason(
        cohort, model_dir, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    truncated = broken / "img0002.nii.gz"
    content = (cohort / "imagesTr" / "img0002.nii.gz").read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    datalist = json.loads((cohort / "dataset.json").read_text())
    datalist["validation"][1]["image"] = str(truncated)
    (tmp_path / "dataset.json").write_text(json.dumps(datalist))

    real_predict, predicted = evaluate.predict_logits, []

    def predict_then_oom_on_the_second_case(*args, **kwargs):
        predicted.append(1)
        if len(predicted) == 2:  # the third case: the second that loads
            raise _cuda_oom()
        return real_predict(*args, **kwargs)
    real_save = nib.save

    def disk_full_on_img0004(img, filename, *args, **kwargs):
        real_save(img, filename, *args, **kwargs)
        if "img0004" in Path(filename).name:
            os.truncate(filename, os.path.getsize(filename) // 2)
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(evaluate, "predict_logits", predict_then_oom_on_the_second_case)
    monkeypatch.setattr(nib, "save", disk_full_on_img0004)

    out = tmp_path / "out"
    argv = _args(model_dir, out, f"--json_list={tmp_path / 'dataset.json'}", f"--data_dir={cohort}",
                 "--allow_absolute_paths", "--save_predictions")
    status = eval_cli.main(argv)
    summary = json.loads((out / "summary.json").read_text())
    reasons = {f["case"]: f["reason"] for f in summary["failures"]}
    written = sorted(p.name for p in (out / "predictions").iterdir())
    scored = {line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]}
    survived = status == 0 and summary["cases"] == {"total": 5, "evaluated": 2, "failed": 3, "skipped": 0}
    for case, reason in sorted(reasons.items()):
        record_input("inference cases", f"{case} (injected fault) -> evaluate run", refused(reason, strip=tmp_path))
    record_fault("evaluation: truncated image, CUDA OOM and a full disk in 3 of 5 cases: others done",
                 survived=survived, data_lost=2 - len(scored))
    assert survived and scored == {"img0001", "img0005"}
    assert str(truncated) in reasons["img0002"] and "Compressed file ended" in reasons["img0002"]
    assert "OutOfMemoryError: CUDA out of memory" in reasons["img0003"]
    assert "No space left on device" in reasons["img0004"]
    assert written == ["img0001.nii.gz", "img0005.nii.gz"] and all(_complete(out / "predictions" / n) for n in written)
    assert stale_temp_files(out / "predictions") == []


def _evaluate_subprocess(fault: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, fault, *argv], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_evaluation_killed_while_writing_a_prediction_leaves_no_partial_file_and_a_rerun_finishes(
        cohort, model_dir, tmp_path, caplog):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("img0001", "img0002", "img0003"):
        os.symlink(cohort / "imagesTr" / f"{name}.nii.gz", inputs / f"{name}.nii.gz")
    out = tmp_path / "out"
    argv = _args(model_dir, out, f"--input_dir={inputs}")
    killed = _evaluate_subprocess("kill_before_replace:img0002.nii.gz", argv)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    predictions = out / "predictions"
    assert sorted(p.name for p in predictions.glob("*.nii.gz") if not p.name.startswith(".")) == ["img0001.nii.gz"]
    assert _complete(predictions / "img0001.nii.gz") and len(stale_temp_files(predictions)) == 1

    caplog.set_level(logging.INFO, logger="swinbob")
    assert eval_cli.main(argv) == 0
    names = sorted(p.name for p in predictions.iterdir())
    complete = [n for n in names if _complete(predictions / n)]
    record_fault("evaluation SIGKILLed between writing and renaming a prediction, then rerun",
                 survived=names == complete == ["img0001.nii.gz", "img0002.nii.gz", "img0003.nii.gz"],
                 data_lost=3 - len(complete))
    assert "img0001: outputs exist, skipped" in caplog.text
    assert names == complete == ["img0001.nii.gz", "img0002.nii.gz", "img0003.nii.gz"]


# ----------------------------------------------------------------------------------------------
# Output names from hostile input names
# ----------------------------------------------------------------------------------------------

HOSTILE_NAMES = ["case with spaces", "肝臓 é", "..%2F..%2Fescaped", "..\\..\\escaped", "-rf", "$(touch pwned)", "a;b|c"]


def test_input_file_names_become_output_names_inside_the_output_dir(cohort, model_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in HOSTILE_NAMES:
        os.symlink(cohort / "imagesTr" / "img0001.nii.gz", inputs / f"{name}.nii.gz")
    (inputs / "._case with spaces.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not NIfTI
    before = _files(tmp_path)
    out = tmp_path / "out"
    status = eval_cli.main(_args(model_dir, out, f"--input_dir={inputs}"))
    created = _files(tmp_path) - before
    outside = sorted(f for f in created if not f.startswith("out/"))
    expected = {f"out/predictions/{name}.nii.gz" for name in HOSTILE_NAMES}
    summary = json.loads((out / "summary.json").read_text())
    for name in HOSTILE_NAMES:
        record_input("output names", f"input file {name!r}.nii.gz -> evaluate --input_dir",
                     handled(f"written as predictions/{name}.nii.gz") if f"out/predictions/{name}.nii.gz" in created
                     else refused("not written"))
    record_input("output names", "macOS '._' metadata file -> evaluate --input_dir",
                 handled("ignored") if summary["cases"]["total"] == len(HOSTILE_NAMES) else refused("taken as a case"))
    assert status == 0 and outside == [] and expected <= created
    assert summary["cases"]["total"] == len(HOSTILE_NAMES) and summary["failures"] == []
    assert all(_complete(tmp_path / name) for name in expected)


def test_case_names_that_would_escape_the_output_dir_fail_alone(tmp_path, cohort):
    image = str(cohort / "imagesTr" / "img0001.nii.gz")
    absolute = str(tmp_path / "absolute")
    cases = [evaluate.Case(name, (image,)) for name in ("../../escaped", absolute, "fine")]
    settings = evaluate.EvalSettings(task=BTCV, data=DATA, window=window.WindowSettings(MODEL.roi),
                                     output_dir=tmp_path / "out" / "run", methods=(evaluate.NO_ETTA,))
    torch.manual_seed(3)
    summary = evaluate.run_evaluation(build_model(MODEL), cases, settings)
    outside = sorted(f for f in _files(tmp_path) if not f.startswith("out/run/"))
    reasons = {f["case"]: f["reason"] for f in summary["failures"]}
    for name, reason in reasons.items():
        record_input("output names", f"case name {name!r} -> run_evaluation (API)", refused(reason, strip=tmp_path))
    assert outside == [] and set(reasons) == {"../../escaped", absolute}
    assert all("refused" in reason for reason in reasons.values())
    assert (tmp_path / "out" / "run" / "predictions" / "fine.nii.gz").is_file()


def test_a_datalist_path_climbing_out_of_data_dir_is_refused_before_any_work(cohort, model_dir, tmp_path, caplog):
    datalist = {"validation": [{"image": "../outside/img.nii.gz", "label": "labelsTr/label0001.nii.gz"}]}
    (tmp_path / "evil.json").write_text(json.dumps(datalist))
    out = tmp_path / "out"
    status = eval_cli.main(_args(model_dir, out, f"--json_list={tmp_path / 'evil.json'}", f"--data_dir={cohort}"))
    message = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    record_input("output names", "datalist image '../outside/img.nii.gz' -> evaluate", refused(message, strip=tmp_path))
    assert status == 2 and "escapes the directory" in message and not out.exists()


def test_two_cases_with_one_name_are_refused_before_their_outputs_collide(cohort, model_dir, tmp_path, caplog):
    data = tmp_path / "data"
    for site in ("siteA", "siteB"):
        (data / site).mkdir(parents=True)
        os.symlink(cohort / "imagesTr" / "img0001.nii.gz", data / site / "scan.nii.gz")
        os.symlink(cohort / "labelsTr" / "label0001.nii.gz", data / site / "scan_label.nii.gz")
    datalist = {"validation": [{"image": f"{site}/scan.nii.gz", "label": f"{site}/scan_label.nii.gz"}
                               for site in ("siteA", "siteB")]}
    (data / "dataset.json").write_text(json.dumps(datalist))
    out = tmp_path / "out"
    status = eval_cli.main(_args(model_dir, out, f"--json_list={data / 'dataset.json'}", f"--data_dir={data}",
                                 "--save_predictions"))
    message = next((r.getMessage() for r in caplog.records if r.levelno == logging.ERROR), "no error")
    record_input("output names", "two datalist cases named 'scan' (siteA/, siteB/) -> evaluate",
                 refused(message, strip=tmp_path) if status == 2 else handled("evaluated"))
    assert status == 2 and "scan" in message and "siteA" in message and "siteB" in message


def _brats_inputs(root: Path, files: dict[str, tuple[str, ...]]) -> Path:
    """``root/<folder>/<case>-<channel>.nii.gz`` tiny volumes; ``files`` maps folder -> file stems."""
    image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    for folder, stems in files.items():
        (root / folder).mkdir(parents=True)
        for stem in stems:
            nib.save(image, root / folder / f"{stem}.nii.gz")
    return root


@pytest.fixture(scope="module")
def brats_model_dir(tmp_path_factory) -> Path:
    folder, brats = tmp_path_factory.mktemp("brats_model"), get_task("brats")
    config = tiny_config(4, 3)
    save_checkpoint(folder / "model.pt", make_checkpoint(build_model(config), run_config(brats, config, DataConfig.from_task(brats))))
    return folder


@pytest.mark.parametrize(("layout", "words"), [
    ({"siteA": ("BraTS-1-t1n", "BraTS-1-t1c"), "siteB": ("BraTS-1-t2w", "BraTS-1-t2f")}, ("'BraTS-1'", "siteA", "siteB")),
    ({"one": ("BraTS-1-t1n", "BraTS-1_t1n", "BraTS-1-t1c", "BraTS-1-t2w", "BraTS-1-t2f")}, ("two t1n files", "BraTS-1_t1n")),
], ids=["one_case_name_in_two_folders", "two_files_for_one_channel"])
def test_channels_of_different_subjects_are_never_mixed_into_one_input(brats_model_dir, tmp_path, caplog, layout, words):
    inputs = _brats_inputs(tmp_path / "inputs", layout)
    status = eval_cli.main(_args(brats_model_dir, tmp_path / "out", f"--input_dir={inputs}"), default_task="brats")
    message = next((r.getMessage() for r in caplog.records if r.levelno == logging.ERROR), "no error")
    description = " + ".join(f"{folder}/{{{','.join(stems)}}}" for folder, stems in layout.items())
    record_input("output names", f"{description} -> evaluate --input_dir (BraTS)",
                 refused(message, strip=tmp_path) if status == 2 else handled("evaluated"))
    assert status == 2 and all(word in message for word in words), message
    assert not (tmp_path / "out" / "predictions").exists()


if __name__ == "__main__":  # the fault runner: python tests/test_faults_infer.py FAULT EVALUATE_ARGS...
    install_fault(sys.argv[1])
    sys.exit(eval_cli.main(sys.argv[2:]))
