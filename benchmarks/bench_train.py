"""Training throughput and peak memory: the reference recipe against the training engine, in one run.

Reference (plain MONAI, as the upstream code runs it): ``SwinUNETR``, ``DiceCELoss(to_onehot_y,
softmax)``, ``AdamW(lr 1e-4, wd 1e-5)``, fp16 autocast + ``GradScaler``, ``loss.item()`` every
step, cuDNN autotuning off (``ref``); the same in bf16 (``ref_bf16``) and with ``torch.compile`` of
the model (``ref_bf16_compile``).

Ours is the training engine itself: the training command line of the task (``BTCV/main.py`` for 14
outputs, ``UKBOB/main.py`` for 73) with the CLI's defaults, resolved and set up by
:func:`swinbob.train.engine.setup` as ``main.py`` does (on a GPU: bf16, fused SDPA window attention,
cached shift masks, channels-last, ``--compile auto`` = compiled, fused AdamW, cuDNN autotuning),
each step being :func:`swinbob.train.engine.train_step`, the call of ``train_epoch`` (with its
finiteness check). ``ours_eager`` adds ``--no_compile``. The loss is not compiled: the engine has
no switch for it, so the compiled loss of the earlier benchmark copy was dropped. Both sides train
on the same crops of a :mod:`swinbob.data.phantoms` cohort, taken from the engine's own loader.

    python benchmarks/bench_train.py                       # GPU: 96³, 4 patches, 14 and 73 outputs
    python benchmarks/bench_train.py --device cpu --feature_size 12 --roi 64 32 32 --steps 3 --warmup 1

``--data_pipeline``: the 14-output ``ours`` run also trains from its own loader (the engine's
CacheDataset, ``train_loader`` and ``batch_stream``, as ``fit`` runs them) on ``--data_cases``
phantoms of ``--data_shape`` read from NIfTI on disk, against the same run on an in-memory batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from common import (
    OUTPUT_TASKS, build_reference_model, environment, parse_roi, peak_gib, phantom_cohort, print_table,
    profile_table, reset_memory, set_reference_flags, sync, training_plan, write_json,
)

Batch = dict[str, torch.Tensor]
VARIANTS = ("ref", "ref_bf16", "ref_bf16_compile", "ours", "ours_eager")


def plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def reference_step(variant: str, in_channels: int, out_channels: int, feature_size: int,
                   device: torch.device) -> Callable[[Batch], torch.Tensor]:
    """The upstream trainer's step: grads to None by hand, autocast around model and loss, scaler,
    ``loss.item()`` every step."""
    torch.manual_seed(0)
    set_reference_flags(device)
    model = build_reference_model(in_channels, out_channels, feature_size).to(device).train()
    net = torch.compile(model) if variant == "ref_bf16_compile" else model
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    dtype = torch.float16 if variant == "ref" else torch.bfloat16
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)

    def step(batch: Batch) -> torch.Tensor:
        for param in model.parameters():
            param.grad = None
        with torch.autocast(device.type, dtype=dtype) if amp else contextlib.nullcontext():
            loss = loss_fn(net(batch["image"]), batch["label"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()
        return loss.detach()
    return step


def engine_step(run) -> Callable[[Batch], torch.Tensor]:
    """:func:`swinbob.train.engine.train_step` on a :class:`swinbob.train.engine.TrainingRun`, as ``train_epoch`` calls it."""
    from swinbob.train.engine import train_step

    def step(batch: Batch) -> torch.Tensor:
        return train_step(run.net, batch, run.loss_fn, run.optimizer, run.scaler, run.amp_dtype)[0]
    return step


def engine_plan(args, task: str, datalist: Path, device: torch.device, variant: str):
    """The training plan of ``variant`` (``ours``: the CLI's defaults; ``ours_eager``: ``--no_compile``)."""
    extra = ("--no_compile",) if variant == "ours_eager" else ()
    logdir = Path(args.work_dir) / f"run_{task}_{variant}"
    return training_plan(task, datalist, logdir, args.roi, args.feature_size, args.batch, device, args.workers, extra)


def phantom_batch(plan, device: torch.device) -> Batch:
    """The first batch of the engine's training loader (phantom crops) on ``device``, as plain tensors."""
    from swinbob.runtime.distributed import DistContext
    from swinbob.data.loaders import batch_stream
    from swinbob.train.engine import build_loaders
    loader, _ = build_loaders(plan, DistContext(device=device))
    batch = next(batch_stream(loader, 0))
    return {key: plain(batch[key]).to(device) for key in ("image", "label")}


def repeat(batch: Batch) -> Iterator[Batch]:
    while True:
        yield batch


def time_steps(step: Callable[[Batch], torch.Tensor], batches: Iterator[Batch], steps: int, warmup: int,
               device: torch.device) -> dict:
    """Warm up (compilation, cuDNN autotuning), then time ``steps`` steps; rates, peak memory, losses."""
    for _ in range(warmup):
        step(next(batches))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, patches = [], 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        losses.append(step(batch))
        patches += batch["image"].shape[0]
    sync(device)
    elapsed = time.perf_counter() - start
    final = torch.stack(losses).float().cpu()
    return {"patches_per_s": patches / elapsed, "step_ms": 1000 * elapsed / steps, "peak_gib": peak_gib(device),
            "loss_first": float(final[0]), "loss_last": float(final[-1]), "finite": bool(torch.isfinite(final).all())}


def data_pipeline(args, run, batch: Batch, device: torch.device) -> dict:
    """The engine's step fed by its own loader from NIfTI on disk vs the same run on ``batch``."""
    from swinbob.data.loaders import batch_stream
    step = engine_step(run)
    in_memory = time_steps(step, repeat(batch), args.steps, args.warmup, device)
    disk = time_steps(step, batch_stream(run.train_loader, 1), args.data_steps, 2, device)
    return {"variant": "ours", "cases": len(run.plan.train_entries), "volume_shape": list(args.data_shape),
            "workers": args.workers, "in_memory_patches_per_s": in_memory["patches_per_s"],
            "disk_patches_per_s": disk["patches_per_s"], "ratio": disk["patches_per_s"] / in_memory["patches_per_s"]}


def measure(args, out_channels: int, device: torch.device, payload: dict, json_path: str | None) -> None:
    """Every variant of ``args.variants`` for ``out_channels`` outputs (and the data pipeline)."""
    from swinbob.runtime.distributed import DistContext
    from swinbob.tasks import get_task
    from swinbob.train.engine import setup
    task = OUTPUT_TASKS[out_channels]
    pipeline = args.data_pipeline and task == "btcv"
    cases, shape = (args.data_cases, args.data_shape) if pipeline else (2, args.phantom_shape)
    datalist = phantom_cohort(task, Path(args.work_dir) / f"{task}_{cases}x{'x'.join(map(str, shape))}", cases, shape)
    in_channels = get_task(task).in_channels
    plans = {name: engine_plan(args, task, datalist, device, name) for name in ("ours", "ours_eager")}
    batch = phantom_batch(plans["ours"], device)
    for name in args.variants:
        reset_memory(device)
        torch._dynamo.reset()
        tic = time.perf_counter()
        run = setup(plans[name], DistContext(device=device)) if name in plans else None
        step = engine_step(run) if run else reference_step(name, in_channels, out_channels, args.feature_size, device)
        try:
            result = time_steps(step, repeat(batch), args.steps, args.warmup, device)
        except torch.OutOfMemoryError as exc:
            result = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
        result.update(variant=name, out_channels=out_channels, in_channels=in_channels, task=task,
                      setup_and_warmup_s=round(time.perf_counter() - tic, 1))
        if name in args.profile:
            print(profile_table(lambda: step(batch), device, args.out_dir, f"train_{name}_{out_channels}"))
        payload["results"].append(result)
        print(json.dumps(result), flush=True)
        write_json(json_path, payload)
        if pipeline and name == "ours":
            payload["data_pipeline"] = data_pipeline(args, run, batch, device)
            print("data_pipeline", json.dumps(payload["data_pipeline"]), flush=True)
            write_json(json_path, payload)
        step = run = None  # frees the model before the next variant is built


def summarize(payload: dict) -> list[dict]:
    """Each row with its speed and memory over the same run's ``ref`` of the same output count."""
    rows = []
    for r in payload["results"]:
        ref = next((x for x in payload["results"] if x["variant"] == "ref" and x["out_channels"] == r["out_channels"]), None)
        row = dict(r)
        if ref and "patches_per_s" in r and "patches_per_s" in ref:
            row["speedup"] = r["patches_per_s"] / ref["patches_per_s"]
            row["mem_ratio"] = r["peak_gib"] / ref["peak_gib"]
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--feature_size", type=int, default=48)
    p.add_argument("--roi", type=int, nargs="+", default=[96])
    p.add_argument("--batch", type=int, default=4, help="patches per step (the CLI's --batch_size 1 × 4 crops)")
    p.add_argument("--out_channels", type=int, nargs="+", default=[14, 73], choices=sorted(OUTPUT_TASKS),
                   help="14: BTCV (1 input channel); 73: UKBOB (4)")
    p.add_argument("--variants", default="ref,ours", help=f"comma list of {','.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--phantom_shape", type=int, nargs=3, default=[160, 160, 128], help="phantoms the crops come from")
    p.add_argument("--profile", default="", help="comma list of variants to profile with torch.profiler")
    p.add_argument("--data_pipeline", action="store_true", help="also measure training from NIfTI on disk")
    p.add_argument("--data_cases", type=int, default=12)
    p.add_argument("--data_shape", type=int, nargs=3, default=[240, 240, 128])
    p.add_argument("--data_steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--work_dir", default=None, help="phantom cohorts and run folders (default: a temporary folder)")
    p.add_argument("--out_dir", default=os.environ.get("OUT"), help="where JSON results and profiles go")
    p.add_argument("--json", default=None, help="results file (default: OUT_DIR/train.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.roi = parse_roi(args.roi)
    device = torch.device(args.device)
    args.profile = [v for v in args.profile.split(",") if v]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="swinbob_bench_train_")
    json_path = args.json or (os.path.join(args.out_dir, "train.json") if args.out_dir else None)
    payload = {"environment": environment(device), "settings": {"roi": args.roi, "batch": args.batch,
               "feature_size": args.feature_size, "steps": args.steps, "warmup": args.warmup}, "results": []}
    print(json.dumps(payload["environment"]))
    for out_channels in args.out_channels:
        measure(args, out_channels, device, payload, json_path)
    payload["summary"] = rows = summarize(payload)
    write_json(json_path, payload)
    print(f"\ntraining, {args.roi} {args.batch} patches, feature_size {args.feature_size}, "
          f"{payload['environment'].get('gpu', device)}")
    print_table(rows, [("out_channels", "outputs", "d"), ("variant", "variant", "s"), ("patches_per_s", "patches/s", ".2f"),
                       ("speedup", "x ref", ".2f"), ("peak_gib", "peak GiB", ".2f"), ("mem_ratio", "mem/ref", ".2f"),
                       ("setup_and_warmup_s", "setup s", ".0f"), ("error", "error", "s")])
    if "data_pipeline" in payload:
        d = payload["data_pipeline"]
        print(f"data pipeline (ours): disk {d['disk_patches_per_s']:.2f} vs in-memory {d['in_memory_patches_per_s']:.2f} "
              f"patches/s = {100 * d['ratio']:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
