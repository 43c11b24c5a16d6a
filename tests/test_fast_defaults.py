"""The fast path is the CLI's default on a GPU only: on the CPU nothing changes (eager model,
window batch 4, fp32, no compile cache touched), and the new flags parse and fail cleanly."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from swinbob.infer import cli as eval_cli, predict

from swinbob.runtime import fast

from swinbob.train import engine as train, cli as train_cli
from swinbob.runtime.distributed import DistContext
from swinbob.model import build_model
from swinbob.tasks import get_task
from tiny import WIDE_ROI as ROI
from tiny import tiny_config

CPU = torch.device("cpu")
CONFIG = tiny_config(out_channels=3, roi=ROI)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(CONFIG)


@pytest.mark.parametrize("choice, device, expected", [
    ("auto", "cpu", False), ("auto", "cuda", True), ("on", "cpu", True), ("off", "cuda", False),
    ("cudagraphs", "cuda", True), (True, "cpu", True), (False, "cuda", False),
])
def test_compile_enabled(choice, device, expected):
    assert fast.compile_enabled(choice, torch.device(device)) is expected


def test_compile_mode_and_bad_choice():
    assert fast.compile_mode("cudagraphs") == "reduce-overhead"
    assert fast.compile_mode("on") is None and fast.compile_mode("auto") is None
    with pytest.raises(ValueError, match="--compile must be one of"):
        fast.compile_enabled("fast", CPU)


def test_evaluation_defaults_on_cpu_are_the_old_path(tiny, monkeypatch):
    """test_etta.py's defaults on the CPU: the loaded model itself (no compile wrapper, no padding
    to a fixed batch), window batch 4, fp32, and Inductor's cache folder untouched."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    args = eval_cli.build_parser("btcv").parse_args([])
    assert (args.compile, args.sw_batch_size, args.compile_cache) == ("auto", "auto", None)
    task = get_task("btcv")
    net, window = eval_cli.inference_setup(args, tiny, CONFIG, task, CPU)
    assert net is tiny and not tiny.training
    assert (window.sw_batch_size, window.amp_dtype, window.roi) == (4, None, ROI)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_explicit_window_batch_and_compile_on_cpu(tiny, tmp_path, monkeypatch, caplog):
    """--sw_batch_size 2 --compile on: the compiled, fixed-batch network, warmed up once, with the
    cache folder reported; same logits as the eager model."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    caplog.set_level(logging.INFO, logger="swinbob")
    model = build_model(CONFIG)
    model.load_state_dict(tiny.state_dict())
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(kw) or module)  # Inductor is slow on 2 cores
    net, batch = fast.inference_net(model, CPU, ROI, 1, None, compile="on", sw_batch_size=2, compile_cache=str(tmp_path / "c"))
    assert batch == 2 and isinstance(net, fast.FixedBatch) and net.batch_size == 2
    assert calls == [{"mode": None, "dynamic": False}]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "c") and (tmp_path / "c").is_dir()
    assert any("compile cache" in r.getMessage() and str(tmp_path / "c") in r.getMessage() for r in caplog.records)
    assert any("compiled the model for window batch 2" in r.getMessage() for r in caplog.records)
    x = torch.randn(3, 1, *ROI)
    with torch.inference_mode():
        assert torch.allclose(net(x), tiny.eval()(x), atol=1e-5)


def test_compile_cache_none_keeps_inductor_default(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert fast.use_compile_cache("none") is None
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_training_wrap_auto_is_eager_on_cpu(tiny, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    ctx = DistContext(device=CPU)
    assert train.wrap(tiny, "auto", ctx) is tiny
    compiled = train.wrap(tiny, "on", ctx, compile_cache="none")  # lazy: nothing compiles until called
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and fast.unwrap(compiled) is tiny


@pytest.mark.parametrize("argv, expected", [
    ([], "auto"), (["--compile"], "on"), (["--compile", "off"], "off"), (["--no_compile"], "off"),
    (["--compile=cudagraphs"], "cudagraphs"),
])
def test_compile_flag_parses_in_every_entry_point(argv, expected):
    assert train_cli.build_parser("btcv").parse_args(argv).compile == expected
    assert eval_cli.build_parser("btcv").parse_args(argv).compile == expected
    args = predict.build_parser().parse_args(["-i", "in", "-o", "out", "-m", "m.pt", *argv])
    assert f"--compile={expected}" in predict.evaluate_argv(args)


@pytest.mark.parametrize("parser, argv", [
    (lambda: train_cli.build_parser("btcv"), ["--compile=fast"]),
    (lambda: eval_cli.build_parser("btcv"), ["--compile=fast"]),
    (lambda: eval_cli.build_parser("btcv"), ["--sw_batch_size=many"]),
    (lambda: train_cli.build_parser("btcv"), ["--sw_batch_size=auto"]),  # training validates with a fixed batch
    (lambda: predict.build_parser(), ["-i", "a", "-o", "b", "-m", "c", "--compile=maybe"]),
])
def test_bad_flag_values_exit_2_naming_the_flag(parser, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2
    assert ("--compile" if "compile" in argv[-1] else "--sw_batch_size") in capsys.readouterr().err


def test_window_batch_auto_passes_through_predict():
    args = predict.build_parser().parse_args(["-i", "in", "-o", "out", "-m", "m.pt"])
    assert "--sw_batch_size=auto" in predict.evaluate_argv(args)
    assert eval_cli.build_parser("ukbob").parse_args(predict.evaluate_argv(args)).sw_batch_size == "auto"
