"""The performance benchmarks: acceptance lines read from their JSON, and (slow) a tiny run of the
training benchmark through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def _train(speed14: float, memory14: float, pipeline: float) -> dict:
    return {"summary": [{"variant": "ref", "out_channels": 14, "speedup": 1.0, "mem_ratio": 1.0},
                        {"variant": "ours", "out_channels": 14, "speedup": speed14, "mem_ratio": memory14},
                        {"variant": "ours", "out_channels": 73, "speedup": 2.4, "mem_ratio": 0.6}],
            "data_pipeline": {"ratio": pipeline}}


def test_acceptance_lines(benchmarks, tmp_path, capsys):
    from check_acceptance import main
    infer = {"results": [{"variant": "ours", "speedup_vs_ref_fp32": 5.0, "speedup_vs_ref_bf16_sw4": 2.5,
                          "rel_err_vs_ref_fp32": 0.011, "max_dice_diff_vs_ref_fp32": 0.001}], "etta": {"ratio": 1.8}}
    (tmp_path / "infer.json").write_text(json.dumps(infer))
    (tmp_path / "good.json").write_text(json.dumps(_train(2.1, 0.5, 0.95)))
    (tmp_path / "slow.json").write_text(json.dumps(_train(1.9, 1.2, 0.5)))
    assert main(["--train", str(tmp_path / "good.json"), "--infer", str(tmp_path / "infer.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("MET    ") == 10 and "NOT MET" not in out
    assert main(["--train", str(tmp_path / "slow.json")]) == 1
    out = capsys.readouterr().out.splitlines()
    failed = [line for line in out if line.startswith("NOT MET")]
    assert len(failed) == 3 and "training 14 outputs: ours / fp16-AMP ref patches/s: 1.9" in failed[0]
    (tmp_path / "empty.json").write_text("{}")
    assert main(["--infer", str(tmp_path / "empty.json")]) == 1
    assert capsys.readouterr().out.count("missing") == 5


@pytest.mark.slow
def test_training_benchmark_runs_the_engine(benchmarks, tmp_path, monkeypatch):
    """ours is swinbob.train.engine.setup + train_step on the CLI's plan: its steps call the engine's."""
    import bench_train

    from swinbob.train import engine as train
    calls = []
    original = train.train_step
    monkeypatch.setattr(train, "train_step", lambda *a, **k: calls.append(1) or original(*a, **k))
    out = tmp_path / "train.json"
    assert bench_train.main(["--device", "cpu", "--feature_size", "12", "--roi", "64", "32", "32", "--steps", "1",
                             "--warmup", "0", "--out_channels", "14", "--variants", "ref,ours", "--workers", "0",
                             "--phantom_shape", "64", "48", "48", "--work_dir", str(tmp_path / "w"),
                             "--json", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["summary"]}
    assert calls == [1]  # the one timed step of ours, none for the reference
    assert rows["ref"]["speedup"] == 1.0 and rows["ours"]["finite"] and rows["ours"]["task"] == "btcv"
    assert (tmp_path / "w" / "run_btcv_ours" / "config.json").is_file()  # the engine's own run folder
