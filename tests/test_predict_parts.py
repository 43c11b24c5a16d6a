"""Prediction split into parts (``--num_parts/--part_id``, torchrun): same files as one process,
one merged statistics file, resumable after SIGKILL, nothing partial under a final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from swinbob.checkpoint import make_checkpoint
from swinbob.errors import ConfigError
from swinbob.files import stale_temp_files
from swinbob.infer.parts import Part, merge_main, part_from_flags, read_records, select_part
from swinbob.infer.predict import main as predict_main
from swinbob.model import build_model
from tiny import WIDE_ROI, tiny_config

NAMES = ["c3", "a1", "b2", "e5", "d4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Five small scans (different contents and sizes) and a tiny BTCV checkpoint."""
    root = tmp_path_factory.mktemp("parts")
    affine = np.array([[-1.5, 0, 0, 20.0], [0, -1.5, 0, 30.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    for index, name in enumerate(NAMES):
        image = np.full((41 + index, 25, 19), -1000.0, np.float32)
        image[3:38, 2:23, 2:17] = rng.normal(40, 60, (35, 21, 15))
        nib.save(nib.Nifti1Image(image, affine), root / "in" / f"{name}.nii.gz")
        label = np.zeros(image.shape, np.uint8)
        label[8:20, 5:15, 4:12], label[24:33, 8:20, 6:14] = 6, 1
        nib.save(nib.Nifti1Image(label, affine), root / f"{name}_label.nii.gz")
    entries = [{"image": f"in/{n}.nii.gz", "label": f"{n}_label.nii.gz"} for n in NAMES]
    (root / "dataset.json").write_text(json.dumps({"validation": entries}))
    torch.manual_seed(0)
    config = tiny_config(roi=WIDE_ROI)
    torch.save(make_checkpoint(build_model(config), {"model": config.to_dict(), "task": "btcv"}, epoch=1),
               root / "model.pt")
    return root / "in", root / "model.pt"


def _argv(inputs: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["-i", str(inputs[0]), "-o", str(out), "-m", str(inputs[1]), "--device=cpu", "--statistics", *extra]


def _command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "swinbob.commands", "predict", *argv]


def _final(folder: Path) -> list[Path]:
    """Files under their final names (temporary files of atomic writes start with a dot)."""
    return [p for p in folder.glob("*.nii.gz") if not p.name.startswith(".")]


def _summary(path: Path) -> dict:
    summary = json.loads(path.read_text())
    summary.pop("elapsed_s")
    return summary


def test_parts_are_disjoint_complete_and_independent_of_input_order():
    names = [f"case{i:03d}" for i in range(23)]
    parts = [[names[i] for i in select_part(names, Part(k, 4))] for k in range(4)]
    assert sorted(n for p in parts for n in p) == sorted(names)  # every case exactly once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    shuffled = list(reversed(names))
    assert [sorted(shuffled[i] for i in select_part(shuffled, Part(k, 4))) for k in range(4)] == [sorted(p) for p in parts]


def test_part_flags_and_torchrun_variables(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert part_from_flags(None, None) is None and part_from_flags(1, 0) is None
    assert part_from_flags(3, 2) == Part(2, 3)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    assert part_from_flags(None, None) == Part(1, 4)
    for flags in ((2, 2), (0, 0), (None, 1), (2, None)):
        with pytest.raises(ConfigError):
            part_from_flags(*flags)


def test_two_concurrent_parts_write_what_one_process_writes(inputs, tmp_path):
    single, split = tmp_path / "single", tmp_path / "split"
    assert predict_main(_argv(inputs, single)) == 0
    runs = [subprocess.Popen(_command(_argv(inputs, split, "--num_parts=2", f"--part_id={k}")), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k in (0, 1)]
    outputs = [run.communicate(timeout=240)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    for name in NAMES:  # bitwise: same bytes, not only same labels
        assert (split / "predictions" / f"{name}.nii.gz").read_bytes() == (single / "predictions" / f"{name}.nii.gz").read_bytes()
    single_stats = json.loads((single / "statistics.json").read_text())
    assert json.loads((split / "statistics.json").read_text()) == single_stats
    assert list(json.loads((split / "statistics.json").read_text())) == list(single_stats)  # same case order
    assert _summary(split / "summary.json") == _summary(single / "summary.json")
    for k in (0, 1):
        part = _summary(split / "parts" / f"part-{k}-of-2" / "summary.json")
        assert part["cases"]["evaluated"] == len(select_part(NAMES, Part(k, 2)))
    assert merge_main([str(split)]) == 0 and _summary(split / "summary.json") == _summary(single / "summary.json")


def test_a_part_killed_mid_run_redoes_only_what_it_lacks(inputs, tmp_path):
    out = tmp_path / "out"
    argv = _argv(inputs, out, "--num_parts=2", "--part_id=0")  # a1, c3, e5
    run = subprocess.Popen(_command(argv), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list((out / "predictions").glob("*.nii.gz")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    part = out / "parts" / "part-0-of-2"
    assert not (part / "summary.json").exists(), "the part ended before it could be killed"
    for path in _final(out / "predictions"):  # every final name holds a complete file (temporary ones may stay)
        assert np.asarray(nib.load(path).dataobj).shape[1:] == (25, 19)
    recorded = {r["case"] for r in read_records(part / "records.jsonl")}
    written = {p.name: p.stat().st_mtime_ns for p in _final(out / "predictions")}
    assert predict_main(argv) == 0
    summary = json.loads((part / "summary.json").read_text())
    assert set(summary["skipped"]) == recorded
    assert summary["cases"]["evaluated"] == 3 - len(recorded)
    for name in recorded:  # finished cases are not redone
        assert (out / "predictions" / f"{name}.nii.gz").stat().st_mtime_ns == written[f"{name}.nii.gz"]
    assert {r["case"] for r in read_records(part / "records.jsonl")} == {"a1", "c3", "e5"}
    assert not stale_temp_files(out / "predictions")
    assert not (out / "summary.json").exists()  # part 1 has not run: nothing merged yet
    assert merge_main([str(out)]) == 2
    assert predict_main(_argv(inputs, out, "--num_parts=2", "--part_id=1")) == 0  # the last part merges
    merged = json.loads((out / "summary.json").read_text())
    assert merged["cases"]["total"] == 5 and set(json.loads((out / "statistics.json").read_text())) == set(NAMES)


def test_a_single_process_is_refused_while_a_part_runs_and_parts_of_one_folder_coexist(inputs, tmp_path):
    from swinbob.files import OutputError, folder_lock
    from swinbob.infer.cli import output_locks
    with output_locks(tmp_path, Part(0, 2)):
        with output_locks(tmp_path, Part(1, 2)):  # another part: fine
            pass
        with pytest.raises(OutputError, match="in use by the parts of a split run"):
            with folder_lock(tmp_path, "--output_dir"):
                pass
        with pytest.raises(OutputError, match="part-0-of-2"):  # the same part twice: refused
            with output_locks(tmp_path, Part(0, 2)):
                pass


def test_evaluation_in_parts_gives_the_single_process_metrics_table_and_summary(inputs, tmp_path):
    from swinbob.infer.cli import main as evaluate_main
    root = inputs[0].parent
    argv = [f"--data_dir={root}", "--json_list=dataset.json", f"--pretrained_dir={root}", "--pretrained_model_name=model.pt",
            "--no_etta", "--workers=0", "--device=cpu", "--no_save_predictions"]
    assert evaluate_main([*argv, f"--output_dir={tmp_path / 'single'}"]) == 0
    for k in (2, 0, 1):
        assert evaluate_main([*argv, f"--output_dir={tmp_path / 'split'}", "--num_parts=3", f"--part_id={k}"]) == 0
    table = (tmp_path / "single" / "metrics.csv").read_text()
    assert "nan" in table and (tmp_path / "split" / "metrics.csv").read_text() == table  # unscored classes too
    assert _summary(tmp_path / "split" / "summary.json") == _summary(tmp_path / "single" / "summary.json")


def test_torchrun_ranks_are_parts_and_the_folder_is_merged(inputs, tmp_path):
    single, split = tmp_path / "single", tmp_path / "split"
    assert predict_main(_argv(inputs, single)) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
               "-m", "swinbob.commands", "predict", *_argv(inputs, split)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (split / "parts").iterdir()) == ["part-0-of-2", "part-1-of-2"]
    for name in NAMES:
        assert (split / "predictions" / f"{name}.nii.gz").read_bytes() == (single / "predictions" / f"{name}.nii.gz").read_bytes()
    assert _summary(split / "summary.json") == _summary(single / "summary.json")
