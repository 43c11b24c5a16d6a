"""Sliding-window inference (and ETTA) latency: the reference usage against the evaluation engine, one run.

Reference: plain MONAI ``SwinUNETR`` and plain ``monai.inferers.sliding_window_inference``
(Gaussian, the task's overlap), fp32 with TF32 off and window batch 4 (``ref_fp32``); the same in
bf16 autocast (``ref_bf16_sw4``, ``ref_bf16_sw16``).

Ours is the evaluation engine itself: ``test_etta.py``'s command line with its defaults, set up by
:func:`swinbob.infer.cli.setup` as ``test_etta.py`` does (checkpoint loading, fused attention,
cached masks; on a GPU also ``--compile auto`` = compiled behind a fixed window batch chosen from
free memory, bf16), each volume predicted by :func:`swinbob.infer.window.predict_logits` as
:func:`swinbob.infer.evaluate.predict_case` calls it. ``ours_eager`` adds ``--no_compile``,
``ours_sw4`` ``--sw_batch_size 4``, ``ours_cudagraphs`` ``--compile cudagraphs``. ETTA
(``--etta``): :func:`swinbob.infer.evaluate.predict_case` with the CLI's ETTA defaults over the same
call without ETTA, with the median seconds of each stage (source, adaptation, adapted window,
integration, the rest); ``--etta_overlaps 0.5 0.25`` repeats it per adapted-window overlap.

The network is first trained for ``--pretrain_steps`` steps (:func:`swinbob.train.engine.train_step`)
on crops of a :mod:`swinbob.data.phantoms` BTCV phantom so that its foreground, which sizes ETTA's
adaptation box, is plausible, then saved as a training run saves ``model.pt``; reference and ours
load these weights. Each variant's logits are compared with ``ref_fp32``'s (relative L2 error,
argmax agreement) and its per-organ Dice on the phantom with ``ref_fp32``'s
(``max_dice_diff_vs_ref_fp32``; the target is 0.005 at most).

    python benchmarks/bench_infer.py --etta                 # GPU: 240×240×160 volume, ROI 96
    python benchmarks/bench_infer.py --device cpu --feature_size 12 --roi 64 32 32 --volume 128 64 48 \
        --repeats 1 --warmup 1 --pretrain_steps 2 --variants ref_fp32,ours --etta
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from common import (
    build_reference_model, environment, parse_roi, print_table, profile_table, rel_error, reset_memory, save_weights,
    set_reference_flags, sync, time_calls, write_json, evaluation_run,
)

OURS_FLAGS = {"ours": (), "ours_eager": ("--no_compile",), "ours_sw4": ("--sw_batch_size=4",),
              "ours_cudagraphs": ("--compile=cudagraphs",)}
REFERENCES = {"ref_fp32": (None, 4), "ref_bf16_sw4": (torch.bfloat16, 4), "ref_bf16_sw16": (torch.bfloat16, 16)}


def phantom_volume(shape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A BTCV-like CT phantom (HU windowed to 0..1 as the task does) and its labels, (1, 1, X, Y, Z)."""
    from swinbob.data.phantoms import btcv_case
    case = btcv_case(0, 0, tuple(shape))
    image = np.clip((np.asarray(case.image, np.float32).reshape(shape) + 175.0) / 425.0, 0.0, 1.0)
    return (torch.from_numpy(image)[None, None].to(device),
            torch.from_numpy(case.label.astype(np.float32))[None, None].to(device))


def pretrain(config, image: torch.Tensor, label: torch.Tensor, steps: int, device: torch.device) -> tuple[torch.nn.Module, float]:
    """A model of ``config`` trained ``steps`` engine steps on random crops (2 per step) of the phantom."""
    from swinbob.runtime.distributed import DistContext
    from swinbob.train.losses import build_loss
    from swinbob.model import build_model
    from swinbob.runtime.devices import autocast_dtype
    from swinbob.tasks import get_task
    from swinbob.train.engine import build_optimizer, train_step, wrap
    torch.manual_seed(0)
    model = build_model(config).to(device)
    net = wrap(model, "off", DistContext(device=device))
    optimizer = build_optimizer("adamw", model, 5e-4, 1e-5, 0.99)
    loss_fn, scaler = build_loss(get_task("btcv")), torch.amp.GradScaler(device.type, enabled=False)
    g, shape, loss = torch.Generator().manual_seed(0), image.shape[2:], torch.full((), float("nan"))
    for _ in range(steps):
        starts = [[int(torch.randint(0, max(1, s - r + 1), (1,), generator=g)) for s, r in zip(shape, config.roi)]
                  for _ in range(2)]
        crops = [(slice(None), slice(None), *(slice(a, a + r) for a, r in zip(start, config.roi))) for start in starts]
        batch = {"image": torch.cat([image[c] for c in crops]), "label": torch.cat([label[c] for c in crops])}
        loss, _ = train_step(net, batch, loss_fn, optimizer, scaler, autocast_dtype(device, "bf16"))
    return model.eval(), float(loss)


def phantom_dice(logits: torch.Tensor, label: torch.Tensor) -> list[float]:
    """Dice of each organ of the phantom (labels 1..C-1; an organ absent from both counts 1)."""
    from swinbob.infer.metrics import dice_per_class
    dice = dice_per_class(logits.argmax(1)[0].cpu(), label[0, 0].long().cpu(), list(range(1, logits.shape[1])))
    return [round(float(d), 5) for d in dice.nan_to_num(1.0)]


def reference_call(name: str, weights: dict, args, image: torch.Tensor, overlap: float, device: torch.device):
    """Plain MONAI network and sliding window, fp32 (TF32 off) or bf16 autocast."""
    dtype, sw = REFERENCES[name]
    set_reference_flags(device)
    net = build_reference_model(1, args.out_channels, args.feature_size).to(device).eval()
    net.load_state_dict(weights)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype and device.type == "cuda" else contextlib.nullcontext()

    def call():
        with torch.no_grad(), autocast:
            return sliding_window_inference(image, args.roi, sw, net, overlap=overlap, mode="gaussian")
    return call, {"sw_batch_size": sw, "amp": str(dtype if device.type == "cuda" else None)}


def ours_call(name: str, paths: dict, image: torch.Tensor, device: torch.device):
    """``test_etta.py``'s set-up (flags of ``name``) and the call predict_case makes per volume."""
    from swinbob.infer.window import predict_logits
    net, settings = evaluation_run(paths["checkpoint"], paths["inputs"], paths["outputs"] / name, device, OURS_FLAGS[name])

    def call():
        with torch.no_grad():
            return predict_logits(net, image, settings.window)
    return call, {"sw_batch_size": settings.window.sw_batch_size, "amp": str(settings.window.amp_dtype),
                  "net": net, "settings": settings}


@contextlib.contextmanager
def stage_timers(device: torch.device, spent: dict[str, float]):
    """Add the seconds of each ETTA stage to ``spent`` by wrapping, for the duration, the functions
    ``predict_case`` calls: ``evaluate.predict_logits`` (1st call: source, later ones: adapted
    windows), ``etta.adapt`` (adaptation, without the adapted predictions made inside it) and
    ``etta.integrate`` (integration); the device is synchronised around each call."""
    from swinbob.infer import etta, evaluate
    targets = [(evaluate, "predict_logits"), (etta, "adapt"), (etta, "integrate")]
    originals = [getattr(module, name) for module, name in targets]
    nested: list[float] = []  # per active timed call: seconds of the timed calls inside it

    def timed(name, fn):
        def wrapper(*a, **k):
            stage = {"adapt": "adaptation", "integrate": "integration"}.get(name) or (
                "adapted_window" if "source" in spent else "source")
            sync(device)
            tic = time.perf_counter()
            nested.append(0.0)
            result = fn(*a, **k)
            sync(device)
            total = time.perf_counter() - tic
            spent[stage] = spent.get(stage, 0.0) + total - nested.pop()  # adapted states are predicted inside adapt
            if nested:
                nested[-1] += total
            return result
        return wrapper
    try:
        for (module, name), fn in zip(targets, originals):
            setattr(module, name, timed(name, fn))
        yield
    finally:
        for (module, name), fn in zip(targets, originals):
            setattr(module, name, fn)


def time_etta(net: torch.nn.Module, settings, image: torch.Tensor, args, device: torch.device, overlap: float) -> dict:
    """``predict_case`` with ETTA (the CLI's settings, adapted-window ``overlap``) vs without, same network."""
    from swinbob.infer.evaluate import ETTA, NO_ETTA, predict_case
    with_etta = dataclasses.replace(settings, methods=(ETTA,), etta=dataclasses.replace(settings.etta, overlap=overlap))
    without = dataclasses.replace(settings, methods=(NO_ETTA,))
    stages: list[dict[str, float]] = []

    def etta_call():
        spent: dict[str, float] = {}
        tic = time.perf_counter()
        with stage_timers(device, spent):
            _, record = predict_case(net, image[0], with_etta)
        sync(device)
        spent["other"] = time.perf_counter() - tic - sum(spent.values())
        stages.append(spent)
        return record

    plain_s, _, _ = time_calls(lambda: predict_case(net, image[0], without), args.repeats, 1, device)
    etta_s, times, record = time_calls(etta_call, args.repeats, args.warmup, device)
    timed = stages[-args.repeats:]
    names = ("source", "adaptation", "adapted_window", "integration", "other")
    breakdown = {name: statistics.median(s.get(name, 0.0) for s in timed) for name in names}
    box = record.get("box")
    fraction = float(np.prod([b - a for a, b in box]) / np.prod(image.shape[2:])) if box else 0.0
    return {"variant": args.etta_variant, "config": dataclasses.asdict(with_etta.etta), "seconds": etta_s, "times": times,
            "plain_seconds": plain_s, "ratio": etta_s / plain_s, "breakdown_s": breakdown,
            "breakdown_x_plain": {k: v / plain_s for k, v in breakdown.items()}, "box": box, "box_fraction": fraction,
            "fallback": record.get("fallback")}


def prepare(args, device: torch.device, image: torch.Tensor, label: torch.Tensor, payload: dict) -> tuple[dict, dict]:
    """Pretrain, save ``model.pt``, write the phantom for ``--input_dir``; the weights and the paths."""
    from swinbob.files import write_nifti
    from swinbob.model import ModelConfig
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="swinbob_bench_infer_"))
    config = ModelConfig(in_channels=1, out_channels=args.out_channels, feature_size=args.feature_size, roi=args.roi)
    tic = time.perf_counter()
    model, loss = pretrain(config, image, label, args.pretrain_steps, device)
    payload["pretrain"] = {"steps": args.pretrain_steps, "final_loss": loss, "seconds": round(time.perf_counter() - tic, 1)}
    print("pretrain", payload["pretrain"], flush=True)
    paths = {"checkpoint": save_weights(model, config, "btcv", work / "model.pt"), "inputs": work / "inputs",
             "outputs": work / "outputs"}
    write_nifti(paths["inputs"] / "phantom.nii.gz", image[0, 0].cpu().numpy(), np.diag([1.5, 1.5, 2.0, 1.0]))
    from swinbob.runtime.fast import unwrap
    weights = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    return weights, paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--feature_size", type=int, default=48)
    p.add_argument("--roi", type=int, nargs="+", default=[96])
    p.add_argument("--volume", type=int, nargs=3, default=[240, 240, 160])
    p.add_argument("--out_channels", type=int, default=14)
    p.add_argument("--variants", default="ref_fp32,ref_bf16_sw4,ours_eager,ours",
                   help=f"comma list of {','.join([*REFERENCES, *OURS_FLAGS])}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pretrain_steps", type=int, default=200)
    p.add_argument("--etta", action="store_true", help="also time ETTA (predict_case, the CLI's settings)")
    p.add_argument("--etta_variant", default="ours")
    p.add_argument("--etta_overlaps", type=float, nargs="+", default=None,
                   help="adapted-window overlaps to time ETTA with (default: the CLI's --etta_overlap only)")
    p.add_argument("--profile", default="", help="comma list of variants to profile (torch.profiler)")
    p.add_argument("--work_dir", default=None, help="checkpoint, phantom and outputs (default: a temporary folder)")
    p.add_argument("--out_dir", default=os.environ.get("OUT"))
    p.add_argument("--json", default=None, help="results file (default: OUT_DIR/infer.json)")
    return p


def measure(name: str, call, row: dict, args, label: torch.Tensor, reference: dict, device: torch.device) -> dict:
    """Time ``call``; add Dice and, against ``ref_fp32``'s logits, the errors."""
    tic = time.perf_counter()
    median, times, logits = time_calls(call, args.repeats, args.warmup, device)
    row.update(variant=name, seconds=median, times=times, setup_and_warmup_s=round(time.perf_counter() - tic - sum(times), 1),
               peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"))
    logits = logits.float()
    row["dice"] = phantom_dice(logits, label)
    if name == "ref_fp32":
        reference.update(logits=logits, dice=row["dice"])
    elif reference:
        row["rel_err_vs_ref_fp32"] = rel_error(logits.to(reference["logits"].device), reference["logits"])
        row["argmax_agreement"] = float((logits.argmax(1).cpu() == reference["logits"].argmax(1).cpu()).float().mean())
        row["max_dice_diff_vs_ref_fp32"] = max(abs(a - b) for a, b in zip(row["dice"], reference["dice"]))
    if name in args.profile:
        print(profile_table(call, device, args.out_dir, f"infer_{name}", calls=1))
    return row


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.roi = parse_roi(args.roi)
    device = torch.device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in REFERENCES and v not in OURS_FLAGS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {[*REFERENCES, *OURS_FLAGS]}")
    args.profile = [v for v in args.profile.split(",") if v]
    json_path = args.json or (os.path.join(args.out_dir, "infer.json") if args.out_dir else None)
    from swinbob.tasks import get_task
    overlap = get_task("btcv").infer_overlap  # the CLI's default, used by both sides
    payload: dict = {"environment": environment(device), "settings": {"roi": args.roi, "volume": args.volume,
                     "overlap": overlap, "feature_size": args.feature_size, "out_channels": args.out_channels,
                     "repeats": args.repeats}, "results": []}
    print(json.dumps(payload["environment"]), flush=True)
    image, label = phantom_volume(args.volume, device)
    weights, paths = prepare(args, device, image, label, payload)
    reference: dict = {}
    for name in variants:
        reset_memory(device)
        torch._dynamo.reset()
        tic = time.perf_counter()
        call, row = reference_call(name, weights, args, image, overlap, device) if name in REFERENCES else \
            ours_call(name, paths, image, device)
        net, settings = row.pop("net", None), row.pop("settings", None)
        row["setup_s"] = round(time.perf_counter() - tic, 1)
        try:
            measure(name, call, row, args, label, reference, device)
        except torch.OutOfMemoryError as exc:
            row.update(variant=name, error=f"out of memory: {str(exc).splitlines()[0]}")
        payload["results"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
        write_json(json_path, payload)
        if args.etta and name == args.etta_variant and net is not None:
            runs = [time_etta(net, settings, image, args, device, o) for o in args.etta_overlaps or [settings.etta.overlap]]
            payload["etta_runs"], payload["etta"] = runs, runs[0]
            for run in runs:
                print("etta", json.dumps(run), flush=True)
        del call, net
    report(payload, args, device)
    write_json(json_path, payload)
    return 0


def report(payload: dict, args, device: torch.device) -> None:
    """Speed-ups over the same run's references, and the ETTA lines."""
    ref = {r["variant"]: r.get("seconds") for r in payload["results"]}
    for row in payload["results"]:
        for base in ("ref_fp32", "ref_bf16_sw4"):
            if ref.get(base) and "seconds" in row:
                row[f"speedup_vs_{base}"] = ref[base] / row["seconds"]
    print(f"\ninference of one {tuple(args.volume)} volume, ROI {args.roi}, overlap {payload['settings']['overlap']}, "
          f"{payload['environment'].get('gpu', device)}")
    print_table(payload["results"], [
        ("variant", "variant", "s"), ("sw_batch_size", "sw batch", "d"), ("seconds", "s/volume", ".3f"),
        ("speedup_vs_ref_fp32", "x fp32", ".2f"), ("speedup_vs_ref_bf16_sw4", "x bf16 sw4", ".2f"),
        ("rel_err_vs_ref_fp32", "rel err", ".2e"), ("max_dice_diff_vs_ref_fp32", "max dDice", ".4f"),
        ("peak_gib", "peak GiB", ".2f"), ("setup_s", "setup s", ".0f"), ("error", "error", "s")])
    for e in payload.get("etta_runs", []):
        print(f"ETTA ({e['variant']}, adapted overlap {e['config']['overlap']}): {e['seconds']:.3f} s vs plain "
              f"{e['plain_seconds']:.3f} s = {e['ratio']:.2f}x (box {e['box_fraction']:.0%} of the volume, {e['fallback']})")
        print("ETTA stages, median s (x plain): " + ", ".join(
            f"{k} {v:.3f} ({e['breakdown_x_plain'][k]:.2f}x)" for k, v in e["breakdown_s"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
