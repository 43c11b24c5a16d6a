"""When ``torch.compile`` fails (no Triton, an Inductor error), training and prediction go on eager
with one warning under ``--compile auto``, and stop with one line and exit 2 under ``--compile on``.

The failure is Dynamo's own: ``torch.compile`` with a backend that raises what Inductor raises
without Triton, so the error reaches the engines the way it does on a broken GPU set-up. On the CPU
``auto`` does not compile, so ``compile_enabled`` is patched to answer as it does on a GPU.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from swinbob.checkpoint import load_checkpoint
from swinbob.commands import main as swinbob_command
from swinbob.data.phantoms import write_cohort
from swinbob.runtime import fast
from swinbob.train import cli as train_cli
from tiny import TINY_TRAIN_FLAGS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NO_TRITON = "Cannot find a working triton installation. Either the package is not installed or it is too old."


def _no_triton_backend(graph_module, example_inputs):
    raise RuntimeError(NO_TRITON)


def _compile_fails(patch: pytest.MonkeyPatch, cache: Path) -> None:
    real_compile = torch.compile
    patch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=_no_triton_backend,
                                                                      dynamic=kw.get("dynamic")))
    patch.setattr(fast, "compile_enabled", lambda choice, device: choice not in ("off", False))
    patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))


def _train(data: Path, logdir: Path, compile_choice: str, fails: bool, caplog) -> tuple[int, list[logging.LogRecord]]:
    argv = [f"--json_list={data / 'dataset.json'}", f"--data_dir={data}", f"--logdir={logdir}", "--workers=0",
            "--num_samples=1", "--warmup_epochs=0", "--max_epochs=1", "--max_steps_per_epoch=2", "--val_every=5",
            "--save_checkpoint", "--seed=3", f"--compile={compile_choice}", *TINY_TRAIN_FLAGS]
    caplog.clear()
    with pytest.MonkeyPatch.context() as patch:
        if fails:
            _compile_fails(patch, logdir.parent / "inductor")
        status = train_cli.main(argv, default_task="btcv")
    torch._dynamo.reset()
    return status, list(caplog.records)


def _messages(records: list[logging.LogRecord], level: int) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == level]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort("btcv", tmp_path_factory.mktemp("btcv"), 3, shape=(40, 40, 36), val_fraction=0.34).parent


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory):
    """The same seeded run twice: compile failing under ``auto``, and ``--compile off``."""
    caplog = _CaptureAll()
    root = tmp_path_factory.mktemp("runs")
    with caplog:
        fell_back = _train(cohort, root / "fallback", "auto", True, caplog)
        eager = _train(cohort, root / "eager", "off", False, caplog)
    return root, fell_back, eager


class _CaptureAll(logging.Handler):
    """A module-scoped stand-in for caplog: every ``swinbob`` record while active."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records = []

    def __enter__(self) -> _CaptureAll:
        logging.getLogger("swinbob").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("swinbob").removeHandler(self)


def test_training_goes_on_eager_with_one_warning_and_the_eager_weights(runs):
    root, (status, records), (eager_status, _) = runs
    assert status == 0 and eager_status == 0
    warnings = [m for m in _messages(records, logging.WARNING) if "torch.compile failed" in m]
    assert len(warnings) == 1, warnings
    assert "a training step" in warnings[0] and "RuntimeError: " + NO_TRITON in warnings[0]
    assert not _messages(records, logging.ERROR)
    # The failed step applied nothing: the weights are those of a run that never compiled.
    fallback = load_checkpoint(root / "fallback" / "model_final.pt")["model"]
    eager = load_checkpoint(root / "eager" / "model_final.pt")["model"]
    assert fallback.keys() == eager.keys()
    assert all(torch.equal(fallback[k], eager[k]) for k in eager)


def test_training_with_compile_on_stops_with_one_line_exit_2(cohort, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="swinbob")
    status, records = _train(cohort, tmp_path / "on", "on", True, caplog)
    assert status == 2
    errors = _messages(records, logging.ERROR)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "--compile on: torch.compile failed" in errors[0] and NO_TRITON in errors[0] and "--compile off" in errors[0]
    assert not (tmp_path / "on" / "model_final.pt").exists()


@pytest.fixture(scope="module")
def scans(runs, cohort) -> Path:
    folder = runs[0] / "scans"
    folder.mkdir(exist_ok=True)
    shutil.copy(sorted((cohort / "imagesTr").glob("*.nii.gz"))[0], folder / "scan.nii.gz")
    return folder


def _predict_folder(runs, scans: Path, out: Path, compile_choice: str, fails: bool) -> int:
    argv = ["predict", "-i", str(scans), "-o", str(out), "-m", str(runs[0] / "fallback" / "model_final.pt"),
            f"--compile={compile_choice}"]
    with pytest.MonkeyPatch.context() as patch:
        if fails:
            _compile_fails(patch, out.parent / "inductor")
        status = swinbob_command(argv)
    torch._dynamo.reset()
    return status


def test_prediction_goes_on_eager_with_one_warning_and_the_eager_labels(runs, scans, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="swinbob")
    assert _predict_folder(runs, scans, tmp_path / "fallback", "auto", True) == 0
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "inference warm-up" in warnings[0] and NO_TRITON in warnings[0], warnings
    assert _predict_folder(runs, scans, tmp_path / "eager", "off", False) == 0
    fell_back = nib.load(tmp_path / "fallback" / "predictions" / "scan.nii.gz")
    eager = nib.load(tmp_path / "eager" / "predictions" / "scan.nii.gz")
    assert np.array_equal(np.asarray(fell_back.dataobj), np.asarray(eager.dataobj))
    assert np.allclose(fell_back.affine, nib.load(scans / "scan.nii.gz").affine)


def test_prediction_with_compile_on_stops_with_one_line_exit_2(runs, scans, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="swinbob")
    assert _predict_folder(runs, scans, tmp_path / "on", "on", True) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "--compile on: torch.compile failed in the inference warm-up" in errors[0] and NO_TRITON in errors[0]
    assert not (tmp_path / "on" / "predictions" / "scan.nii.gz").exists()


def test_ordinary_errors_are_not_taken_for_compile_failures():
    assert fast.compile_error(RuntimeError("CUDA out of memory")) is None
    wrapped = RuntimeError("step failed")
    wrapped.__cause__ = torch._dynamo.exc.Unsupported.__new__(torch._dynamo.exc.Unsupported)
    assert fast.compile_error(wrapped) is wrapped.__cause__
