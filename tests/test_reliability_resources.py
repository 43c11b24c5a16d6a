"""Reliability under attack, classes 5 and 6 (see test_reliability.py): resources spent on untrusted
files, quadratic evaluation bookkeeping. Each test records its attack in the fault report."""

from __future__ import annotations

import json
import os
import signal
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import swinbob.infer.evaluate as evaluate
import swinbob.infer.model_loading as inference
from faults_report import record_input, refused
from swinbob.checkpoint import CheckpointError, load_checkpoint
from swinbob.data.transforms import DataConfig
from swinbob.files import NiftiError, load_nifti_header, write_nifti
from swinbob.data.inputs import Case
from swinbob.model import ModelConfig
from swinbob.tasks import get_task
from swinbob.infer.window import WindowSettings

from test_reliability import AFFINE, _attack_class, _solf  # noqa: F401 - _attack_class: the class table

pytestmark = pytest.mark.faults


# ----------------------------------------------------------------------------------------------
# 5. Resources spent on untrusted files
# ----------------------------------------------------------------------------------------------

def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_building_it(tmp_path, monkeypatch):
    path = tmp_path / "huge.pt"
    torch.save({"config": {"in_channels": 1, "out_channels": 14, "feature_size": 1200, "roi": [64, 64, 64]},
                "model": {"x": torch.zeros(1)}}, path)
    assert path.stat().st_size < 4096

    def no_build(config):
        raise AssertionError(f"a network of feature_size {config.feature_size} was built")

    monkeypatch.setattr(inference, "build_model", no_build)
    fallback = ModelConfig(1, 14, 12, (64, 64, 64))
    with pytest.raises(CheckpointError) as caught:
        inference.load_inference_model(path, fallback)
    record_input("untrusted checkpoint", "1.8 KB checkpoint declaring feature_size 1200", refused(caught.value, strip=tmp_path))
    assert "feature_size 1200 is larger than the limit 192 (--max_feature_size)" in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_deflate_bomb_checkpoint_is_refused_from_its_zip_directory(tmp_path, monkeypatch):
    path = tmp_path / "bomb.pt"
    torch.save({"model": {"x": torch.zeros(1)}}, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("bomb/data/99", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(64):  # 64 MiB of zeros deflate to ~64 KiB
                member.write(chunk)
    assert path.stat().st_size < 2**20

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called on a compression bomb")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    record_input("untrusted checkpoint", "deflate bomb (64 MiB in <1 MiB) -> load_checkpoint", refused(caught.value, strip=tmp_path))
    assert "compression bomb" in str(caught.value) and str(path) in str(caught.value)


def test_an_analyze_pair_whose_header_claims_2_gb_is_refused_from_the_header(tmp_path):
    header = nib.AnalyzeHeader()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.float32)
    header.set_zooms((1.0, 1.0, 1.0))
    (tmp_path / "big.hdr").write_bytes(header.binaryblock)
    (tmp_path / "big.img").write_bytes(bytes(4096))
    with pytest.raises(NiftiError) as caught:
        load_nifti_header(tmp_path / "big.hdr")
    record_input("untrusted image", "Analyze .hdr/.img claiming 2 GiB -> header check", refused(caught.value, strip=tmp_path))
    assert "truncated" in str(caught.value) and "big.img has 4096" in str(caught.value)


def test_the_voxel_limit_is_set_by_flag(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SWINBOB_MAX_VOXELS", raising=False)
    write_nifti(tmp_path / "labels" / "case.nii.gz", np.ones((20, 20, 20), np.uint8), AFFINE)
    status = _solf(tmp_path / "labels", tmp_path / "out", "--max_voxels", "1000")
    failures = json.loads((tmp_path / "out" / "report" / "failures.json").read_text())
    os.environ.pop("SWINBOB_MAX_VOXELS", None)
    assert status == 1 and "larger than 1000 voxels (--max_voxels)" in failures[0]["reason"]


# ----------------------------------------------------------------------------------------------
# 6. Linear evaluation bookkeeping
# ----------------------------------------------------------------------------------------------

def test_evaluation_appends_case_records_and_writes_the_summary_once(tmp_path, monkeypatch):
    task = get_task("btcv")
    settings = evaluate.EvalSettings(task=task, data=DataConfig.from_task(task), output_dir=tmp_path / "out",
                                     window=WindowSettings((64, 64, 64), 1, 0.5, None, "cpu"), methods=(evaluate.NO_ETTA,))
    cases = [Case(f"missing{i:03d}", (str(tmp_path / f"missing{i:03d}.nii.gz"),), str(tmp_path / "l.nii.gz")) for i in range(40)]
    writes = []
    real_write = evaluate.atomic_write_text
    monkeypatch.setattr(evaluate, "atomic_write_text", lambda path, text: (writes.append(Path(path).name), real_write(path, text)))
    summary = evaluate.run_evaluation(torch.nn.Identity(), cases, settings)
    assert summary["cases"]["failed"] == 40 and len(summary["failures"]) == 40
    assert writes == ["summary.json"]  # once, not once per case (quadratic: 8,000 cases took minutes)


def test_an_interrupted_evaluation_still_writes_its_summary(tmp_path, monkeypatch):
    task = get_task("btcv")
    settings = evaluate.EvalSettings(task=task, data=DataConfig.from_task(task), output_dir=tmp_path / "out",
                                     window=WindowSettings((64, 64, 64), 1, 0.5, None, "cpu"), methods=(evaluate.NO_ETTA,))
    cases = [Case(f"c{i}", (str(tmp_path / f"c{i}.nii.gz"),), None) for i in range(5)]
    real_run_one = evaluate._run_one

    def stop_during_case_2(*args):
        real_run_one(*args)
        if args[2] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(evaluate, "_run_one", stop_during_case_2)
    summary = evaluate.run_evaluation(torch.nn.Identity(), cases, settings)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["interrupted"] == "SIGTERM" and written["cases"]["failed"] == 2 == summary["cases"]["failed"]
