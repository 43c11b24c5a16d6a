"""Sliding-window inference (and ETTA) latency: the reference usage against our fast path, one run.

Reference: plain MONAI SwinUNETR and plain ``monai.inferers.sliding_window_inference`` (overlap
0.5, Gaussian), fp32 with TF32 off and window batch 4; also the same in bf16 autocast. Ours: the
same weights with :func:`swinbob.fast.accelerate` (fused SDPA window attention, channels-last 3D,
``torch.compile`` behind a fixed window batch) in bf16, called through the evaluation engine's
:func:`swinbob.window.sliding_window_logits`. ETTA: :func:`swinbob.etta.etta_predict` with its
default settings on our fast model, timed with the source prediction it needs, over plain inference,
with the median seconds of each stage (source, adaptation, adapted window, integration, the rest);
``--etta_overlaps 0.5 0.25`` times it once per adapted-window overlap (``EttaConfig.overlap``).

The network is first trained for a few hundred steps on a phantom (``--pretrain_steps``) so that
its foreground, which sizes ETTA's adaptation box, is plausible; reference and ours then share
these weights, and ours' logits are compared with the reference fp32 logits (relative L2 error)
and every variant's per-organ Dice against the phantom's labels with the reference fp32 Dice
(``max_dice_diff_vs_ref_fp32``; the issue asks for 0.005 at most).

    python benchmarks/bench_infer.py                      # GPU: 240×240×160 volume, ROI 96
    python benchmarks/bench_infer.py --device cpu --feature_size 12 --roi 32 --volume 64 64 64 --repeats 1 --pretrain_steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_train import (  # noqa: E402
    build_reference_model, environment, parse_roi, print_table, rel_error, reset_memory, set_reference_flags, sync,
    write_json,
)
from monai.inferers import sliding_window_inference  # noqa: E402

from swinbob import fast  # noqa: E402
from swinbob.window import WindowSettings, predict_logits, sliding_window_logits  # noqa: E402
from swinbob.losses import MaskedDiceCELoss  # noqa: E402


def phantom_volume(shape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A BTCV-like CT phantom (HU windowed to 0..1 as the task does) and its labels, (1, 1, X, Y, Z)."""
    from swinbob.phantoms import btcv_case
    case = btcv_case(0, 0, tuple(shape))
    image = np.clip((np.asarray(case.image, np.float32).reshape(shape) + 175.0) / 425.0, 0.0, 1.0)
    return (torch.from_numpy(image)[None, None].to(device),
            torch.from_numpy(case.label.astype(np.float32))[None, None].to(device))


def pretrain(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, roi, steps: int, device: torch.device) -> float:
    """A few hundred steps on random crops of the phantom, so the predictions look like organs."""
    if steps <= 0:
        return float("nan")
    net = fast.accelerate(model, sdpa=True, channels_last=device.type == "cuda")
    opt = fast.fused_adamw(model.parameters(), lr=5e-4, weight_decay=1e-5)
    loss_fn = MaskedDiceCELoss()
    g = torch.Generator().manual_seed(0)
    shape = image.shape[2:]
    loss = torch.zeros(())
    model.train()
    for _ in range(steps):
        crops, labels = [], []
        for _ in range(2):
            start = [int(torch.randint(0, max(1, s - r + 1), (1,), generator=g)) for s, r in zip(shape, roi)]
            sl = (slice(None), slice(None), *(slice(a, a + r) for a, r in zip(start, roi)))
            crops.append(image[sl])
            labels.append(label[sl])
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net(torch.cat(crops))
        loss = loss_fn(logits.float(), torch.cat(labels))
        loss.backward()
        opt.step()
    fast.disable_sdpa(model)
    fast.disable_cached_masks(model)
    fast.disable_channels_last(model)
    model.eval()
    return float(loss)


def phantom_dice(logits: torch.Tensor, label: torch.Tensor) -> list[float]:
    """Dice of each organ of the phantom (labels 1..C-1; an organ absent from both counts 1)."""
    from swinbob.metrics import dice_per_class
    dice = dice_per_class(logits.argmax(1)[0].cpu(), label[0, 0].long().cpu(), list(range(1, logits.shape[1])))
    return [round(float(d), 5) for d in dice.nan_to_num(1.0)]


def time_calls(fn, repeats: int, warmup: int, device: torch.device) -> tuple[float, list[float], object]:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--feature_size", type=int, default=48)
    p.add_argument("--roi", type=int, nargs="+", default=[96])
    p.add_argument("--volume", type=int, nargs=3, default=[240, 240, 160])
    p.add_argument("--out_channels", type=int, default=14)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--sw_batch", type=int, default=16, help="our window batch (reference uses 4)")
    p.add_argument("--variants", default="ref_fp32,ref_bf16_sw4,ours_eager,ours",
                   help="ref_fp32, ref_tf32, ref_bf16_sw4, ref_bf16_sw16, ours_eager (SDPA + channels-last, bf16), "
                        "ours (+ compile), ours_cudagraphs (compile mode reduce-overhead)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pretrain_steps", type=int, default=200)
    p.add_argument("--etta", action="store_true", help="also time ETTA (swinbob.etta, default settings) on 'ours'")
    p.add_argument("--etta_variant", default="ours")
    p.add_argument("--etta_overlaps", type=float, nargs="+", default=None,
                   help="adapted-window overlaps (EttaConfig.overlap) to time ETTA with, in this run "
                        "(default: the EttaConfig default only)")
    p.add_argument("--profile", default="", help="comma list of variants to profile (torch.profiler)")
    p.add_argument("--out_dir", default=os.environ.get("OUT"))
    p.add_argument("--json", default=None, help="results file (default: OUT_DIR/infer.json)")
    args = p.parse_args(argv)
    roi = parse_roi(args.roi)
    device = torch.device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    profile = [v for v in args.profile.split(",") if v]
    json_path = args.json or (os.path.join(args.out_dir, "infer.json") if args.out_dir else None)
    payload: dict = {"environment": environment(device), "settings": {"roi": roi, "volume": args.volume,
                     "overlap": args.overlap, "feature_size": args.feature_size, "out_channels": args.out_channels,
                     "sw_batch_ours": args.sw_batch, "repeats": args.repeats}, "results": []}
    print(json.dumps(payload["environment"]), flush=True)

    image, label = phantom_volume(args.volume, device)
    torch.manual_seed(0)
    model = build_reference_model(1, args.out_channels, args.feature_size).to(device)
    tic = time.perf_counter()
    payload["pretrain"] = {"steps": args.pretrain_steps, "final_loss": pretrain(model, image, label, roi, args.pretrain_steps, device),
                           "seconds": round(time.perf_counter() - tic, 1)}
    print("pretrain", payload["pretrain"], flush=True)
    weights = copy.deepcopy(model.state_dict())
    cuda = device.type == "cuda"
    bf16 = torch.bfloat16 if cuda else None
    ref_logits = None

    def reference(dtype, sw, tf32=False):
        set_reference_flags(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        net = build_reference_model(1, args.out_channels, args.feature_size).to(device).eval()
        net.load_state_dict(weights)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

        def call():
            with torch.no_grad(), autocast:
                return sliding_window_inference(image, roi, sw, net, overlap=args.overlap, mode="gaussian")
        return net, call

    def ours(compile_mode=None, compiled=True, sw=args.sw_batch):
        fast.set_fast_backend_flags(tf32=False)
        net = build_reference_model(1, args.out_channels, args.feature_size).to(device).eval()
        net.load_state_dict(weights)
        # compile only the no-grad forward: ETTA's few adaptation steps run eager (SDPA + NDHWC)
        net = fast.accelerate(net, sdpa=True, channels_last=cuda, compile="inference" if compiled else False,
                              compile_mode=compile_mode, fixed_batch=sw if compiled else None)

        def call():
            with torch.inference_mode():
                return sliding_window_logits(net, image, roi, sw, args.overlap, bf16)
        return net, call

    makers = {
        "ref_fp32": lambda: reference(None, 4),
        "ref_tf32": lambda: reference(None, 4, tf32=True),
        "ref_bf16_sw4": lambda: reference(bf16, 4),
        "ref_bf16_sw16": lambda: reference(bf16, 16),
        "ours_eager": lambda: ours(compiled=False),
        "ours": lambda: ours(),
        "ours_cudagraphs": lambda: ours(compile_mode="reduce-overhead"),
    }
    nets = {}
    for name in variants:
        reset_memory(device)
        tic = time.perf_counter()
        net, call = makers[name]()
        try:
            median, times, logits = time_calls(call, args.repeats, args.warmup, device)
        except torch.OutOfMemoryError as exc:
            payload["results"].append({"variant": name, "error": f"out of memory: {str(exc).splitlines()[0]}"})
            continue
        row = {"variant": name, "seconds": median, "times": times, "setup_and_warmup_s": round(time.perf_counter() - tic - sum(times), 1),
               "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")}
        logits = logits.float()
        row["dice"] = phantom_dice(logits, label)
        if name == "ref_fp32":
            ref_logits, ref_dice = logits, row["dice"]
        elif ref_logits is not None:
            row["rel_err_vs_ref_fp32"] = rel_error(logits, ref_logits)
            row["argmax_agreement"] = float((logits.argmax(1) == ref_logits.argmax(1)).float().mean())
            row["max_dice_diff_vs_ref_fp32"] = max(abs(a - b) for a, b in zip(row["dice"], ref_dice))
        if name in profile:
            from torch.profiler import ProfilerActivity, profile as torch_profile
            with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
                call()
                sync(device)
            table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=25,
                                              max_name_column_width=70)
            print(table)
            if args.out_dir:
                Path(args.out_dir, f"profile_infer_{name}.txt").write_text(table)
        payload["results"].append(row)
        print(json.dumps(row), flush=True)
        write_json(json_path, payload)
        if name == args.etta_variant and args.etta:
            nets[name] = net
        del net, call, logits
    if args.etta and args.etta_variant in nets:
        from swinbob.etta import EttaConfig
        overlaps = args.etta_overlaps or [EttaConfig().overlap]
        payload["etta_runs"] = []
        for etta_overlap in overlaps:
            run = time_etta(nets[args.etta_variant], image, roi, args, bf16, device, payload["results"],
                            EttaConfig(overlap=etta_overlap))
            payload["etta_runs"].append(run)
            print("etta", json.dumps(run), flush=True)
        payload["etta"] = payload["etta_runs"][0]

    ref = {r["variant"]: r.get("seconds") for r in payload["results"]}
    for row in payload["results"]:
        if "seconds" in row:
            for base in ("ref_fp32", "ref_bf16_sw4"):
                if ref.get(base):
                    row[f"speedup_vs_{base}"] = ref[base] / row["seconds"]
    write_json(json_path, payload)
    print(f"\ninference of one {tuple(args.volume)} volume, ROI {roi}, overlap {args.overlap}, "
          f"{payload['environment'].get('gpu', device)}")
    print_table(payload["results"], [("variant", "variant", "s"), ("seconds", "s/volume", ".3f"),
                                      ("speedup_vs_ref_fp32", "x fp32", ".2f"), ("speedup_vs_ref_bf16_sw4", "x bf16 sw4", ".2f"),
                                      ("rel_err_vs_ref_fp32", "rel err", ".2e"), ("max_dice_diff_vs_ref_fp32", "max dDice", ".4f"),
                                      ("peak_gib", "peak GiB", ".2f"),
                                      ("setup_and_warmup_s", "setup s", ".0f"), ("error", "error", "s")])
    for e in payload.get("etta_runs", []):
        print(f"ETTA ({e['variant']}, {e['config']}): {e['seconds']:.3f} s incl. source prediction vs "
              f"plain {e['plain_seconds']:.3f} s = {e['ratio']:.2f}x (box {e['box_fraction']:.0%} of the volume, "
              f"{e['box_windows']} adapted vs {e['source_windows']} source windows, {e.get('fallback')})")
        print("ETTA stages, median s (x plain): " + ", ".join(
            f"{k} {v:.3f} ({e['breakdown_x_plain'][k]:.2f}x)" for k, v in e["breakdown_s"].items()))
    return 0


ETTA_STAGES = {"adapt": "adaptation", "predict_logits": "adapted_window", "integrate": "integration"}
"""The functions of :mod:`swinbob.etta` that ``etta_predict`` calls for each stage, by stage name."""


@contextlib.contextmanager
def etta_stage_timers(device: torch.device, spent: dict[str, float]):
    """Add the seconds spent in each ETTA stage (see ``ETTA_STAGES``) to ``spent``, synchronising
    the device around each call, by wrapping the functions in the ``swinbob.etta`` namespace."""
    from swinbob import etta
    originals = {name: getattr(etta, name) for name in ETTA_STAGES}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            sync(device)
            tic = time.perf_counter()
            result = fn(*args, **kwargs)
            sync(device)
            spent[ETTA_STAGES[name]] = spent.get(ETTA_STAGES[name], 0.0) + time.perf_counter() - tic
            return result
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(etta, name, timed(name, fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(etta, name, fn)


def window_count(shape, roi, overlap: float) -> int:
    """Windows MONAI's sliding window cuts ``shape`` into (stride int(ROI·(1 - overlap)), at least 1)."""
    count = 1
    for side, size in zip(shape, roi):
        stride = max(int(size * (1 - overlap)), 1)
        count *= math.ceil(max(side - size, 0) / stride) + 1
    return count


def time_etta(net: torch.nn.Module, image: torch.Tensor, roi, args, amp_dtype, device: torch.device, results: list,
              config=None) -> dict:
    """Source prediction + ``etta_predict`` (``config``, default EttaConfig) vs plain inference, same
    model, with the median seconds of each stage: source, adaptation, adapted window, integration,
    and the rest (foreground, box, episode bookkeeping)."""
    from swinbob.etta import EttaConfig, etta_predict
    config = config or EttaConfig()
    window = WindowSettings(tuple(roi), args.sw_batch, args.overlap, amp_dtype)
    stages: list[dict[str, float]] = []

    def plain():
        with torch.inference_mode():
            return predict_logits(net, image, window)

    def with_etta():
        spent: dict[str, float] = {}
        tic = time.perf_counter()
        with torch.no_grad():
            source = predict_logits(net, image, window)
        sync(device)
        spent["source"] = time.perf_counter() - tic
        with etta_stage_timers(device, spent):
            outcome = etta_predict(net, image, source, "softmax", config, window)
        sync(device)
        spent["other"] = time.perf_counter() - tic - sum(spent.values())
        stages.append(spent)
        return outcome

    plain_s, _, source = time_calls(plain, args.repeats, 1, device)
    etta_s, times, outcome = time_calls(with_etta, args.repeats, 2, device)
    timed = stages[-args.repeats:]
    breakdown = {name: statistics.median(s.get(name, 0.0) for s in timed)
                 for name in ("source", *ETTA_STAGES.values(), "other")}
    box = outcome.box
    fraction = float(np.prod([s.stop - s.start for s in box]) / np.prod(image.shape[2:])) if box else 0.0
    box_shape = [s.stop - s.start for s in box] if box else []
    return {"variant": args.etta_variant, "config": {k: getattr(config, k) for k in ("steps", "lr", "windows", "overlap")},
            "source_windows": window_count(image.shape[2:], roi, args.overlap),
            "box_windows": window_count(box_shape, roi, config.overlap) if box else 0,
            "seconds": etta_s, "times": times, "plain_seconds": plain_s, "ratio": etta_s / plain_s,
            "breakdown_s": breakdown, "breakdown_x_plain": {k: v / plain_s for k, v in breakdown.items()},
            "stages_s": timed, "box_fraction": fraction, "box": [[s.start, s.stop] for s in box] if box else None,
            "fallback": outcome.fallback}


if __name__ == "__main__":
    raise SystemExit(main())
