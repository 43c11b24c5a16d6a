"""Helpers shared by the benchmark scripts: timing, memory, environment, tables, the plain-MONAI
reference network, phantom data, and the engine objects the "ours" variants run.

The "ours" variants build nothing by hand: :func:`training_run` parses the training command line
(``UKBOB/main.py`` / ``BTCV/main.py`` flags, the CLI's defaults unless given) and calls
:func:`swinbob.train.engine.setup`, as ``main.py`` does; :func:`evaluation_run` parses ``test_etta.py``'s
flags and calls :func:`swinbob.infer.cli.setup`, as ``test_etta.py`` does. Their data are
:mod:`swinbob.data.phantoms` cohorts written to disk as NIfTI.

Scripts import this module as ``common`` when run as ``python benchmarks/<script>.py`` (Python puts
the script's folder on the path); the repository root must be importable (``PYTHONPATH=.`` or
an installed ``swinbob``).
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.networks.nets import SwinUNETR

GIB = 2**30
OUTPUT_TASKS = {14: "btcv", 73: "ukbob"}
"""Output channels measured -> the task whose CLI builds the engine (BTCV: 1 input; UKBOB: 4)."""


def parse_roi(values: Sequence[int]) -> tuple[int, int, int]:
    """1 or 3 sides. A 32³ ROI cannot train (Swin-UNETR's bottleneck would be 1³, which
    InstanceNorm refuses), so it becomes 64×32×32 with a note: the smallest shape that runs."""
    roi = tuple(list(values) * 3) if len(values) == 1 else tuple(values)
    if len(roi) != 3:
        raise SystemExit("--roi takes 1 or 3 integers")
    if all(r == 32 for r in roi):
        print("note: ROI 32³ gives a 1³ bottleneck that InstanceNorm refuses; using 64×32×32")
        roi = (64, 32, 32)
    return roi  # type: ignore[return-value]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")


def set_reference_flags(device: torch.device) -> None:
    """PyTorch defaults, as the reference code runs: no cuDNN autotuning, no TF32."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def environment(device: torch.device) -> dict:
    """Date, versions, device and the exact command, for the results file."""
    import monai
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
        "device": str(device), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def build_reference_model(in_channels: int, out_channels: int, feature_size: int) -> torch.nn.Module:
    """Plain MONAI SwinUNETR exactly as the reference scripts build it."""
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                     drop_rate=0.0, attn_drop_rate=0.0, dropout_path_rate=0.0, use_checkpoint=False)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """rows of dicts; columns (key, header, format)."""
    widths = [max(len(h), 10) for _, h, _ in columns]
    print("  ".join(h.ljust(w) for (_, h, _), w in zip(columns, widths)))
    for row in rows:
        cells = []
        for (key, _, fmt), w in zip(columns, widths):
            value = row.get(key)
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            cells.append(("-" if missing else format(value, fmt)).ljust(w))
        print("  ".join(cells))


def time_calls(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> tuple[float, list[float], object]:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls; and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times), times, result


def profile_table(fn: Callable[[], object], device: torch.device, out_dir: str | None, tag: str, calls: int = 3) -> str:
    """torch.profiler over ``calls`` calls of ``fn``; the top ops by device time (also written to out_dir)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        Path(out_dir, f"profile_{tag}.txt").write_text(table)
    return table


# ----------------------------------------------------------------------------------------------
# Phantom data and the engine objects
# ----------------------------------------------------------------------------------------------

def phantom_cohort(task: str, root: Path, cases: int, shape: Sequence[int]) -> Path:
    """A :mod:`swinbob.data.phantoms` cohort of ``task`` in ``root`` (all cases training ones), written
    unless ``root`` already holds one; returns its dataset.json."""
    from swinbob.data.phantoms import write_cohort
    datalist = root / "dataset.json"
    if not datalist.exists():
        write_cohort(task, root, cases, tuple(shape), val_fraction=0.0)
    return datalist


def roi_flags(roi: Sequence[int]) -> list[str]:
    return [f"--roi_x={roi[0]}", f"--roi_y={roi[1]}", f"--roi_z={roi[2]}"]


def training_plan(task: str, datalist: Path, logdir: Path, roi: Sequence[int], feature_size: int, patches: int,
                  device: torch.device, workers: int, extra: Sequence[str] = ()):
    """The :class:`swinbob.train.cli.TrainPlan` of the training command line of ``task`` on
    ``datalist`` (the CLI's defaults unless given in ``extra``), as ``main.py`` resolves it.

    ``patches`` per step = ``--batch_size`` volumes × the task's ``--num_samples`` crops.
    """
    from swinbob.tasks import get_task
    from swinbob.train.cli import build_parser, resolve_plan
    num_samples = get_task(task).num_samples
    if patches % num_samples:
        raise SystemExit(f"--batch must be a multiple of {task}'s {num_samples} crops per volume")
    argv = [f"--task={task}", f"--data_dir={datalist.parent}", f"--json_list={datalist}", f"--logdir={logdir}",
            f"--feature_size={feature_size}", *roi_flags(roi), f"--batch_size={patches // num_samples}",
            f"--workers={workers}", f"--device={device}", "--data_check=headers", *extra]
    return resolve_plan(build_parser(task).parse_args(argv))


def save_weights(model: torch.nn.Module, config, task_name: str, path: Path) -> Path:
    """``model`` (built from ``config``, a :class:`swinbob.model.ModelConfig`) saved as a training run
    saves ``model.pt``: weights and the run's config, so that evaluation rebuilds it from the file."""
    from swinbob.checkpoint import make_checkpoint
    from swinbob.data.transforms import DataConfig
    from swinbob.tasks import get_task
    from swinbob.train.state import run_config
    task = get_task(task_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(make_checkpoint(model, run_config(task, config, DataConfig.from_task(task, roi=config.roi))), path)
    return path


def evaluation_run(checkpoint: Path, input_dir: Path, output_dir: Path, device: torch.device, extra: Sequence[str] = ()):
    """:func:`swinbob.infer.cli.setup` for ``test_etta.py`` with the CLI's defaults (unless ``extra``):
    the loaded, accelerated (on a GPU: compiled, window batch from free memory, bf16) network, the
    cases of ``input_dir`` and the evaluation settings."""
    from swinbob.infer.cli import build_parser, setup
    argv = [f"--pretrained_dir={checkpoint.parent}", f"--pretrained_model_name={checkpoint.name}",
            f"--input_dir={input_dir}", f"--output_dir={output_dir}", f"--device={device}", "--overwrite", *extra]
    net, _cases, settings, _context = setup(build_parser("btcv").parse_args(argv))
    return net, settings
