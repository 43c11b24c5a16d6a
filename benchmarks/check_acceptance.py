"""Read bench_train.py / bench_infer.py results (JSON) and print the GPU acceptance lines:
each figure, its target and whether it is met. Exit status 0 when every line present is met, 1
otherwise (a missing figure counts as not met).

    python benchmarks/check_acceptance.py --train OUT/train.json --infer OUT/infer.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _row(rows: list[dict], variant: str, **match) -> dict:
    return next((r for r in rows if r.get("variant") == variant and all(r.get(k) == v for k, v in match.items())), {})


def training_lines(train: dict) -> list[tuple[str, float | None, str, bool]]:
    """(line, value, target, met) for training speed/memory per output count and the NIfTI pipeline."""
    lines = []
    for outputs in (14, 73):
        row = _row(train.get("summary", []), "ours", out_channels=outputs)
        speed, memory = row.get("speedup"), row.get("mem_ratio")
        lines.append((f"training {outputs} outputs: ours / fp16-AMP ref patches/s", speed, ">= 2.0",
                      speed is not None and speed >= 2.0))
        lines.append((f"training {outputs} outputs: ours / ref peak memory", memory, "<= 1.0",
                      memory is not None and memory <= 1.0))
    ratio = train.get("data_pipeline", {}).get("ratio")
    lines.append(("NIfTI pipeline / in-memory patches/s", ratio, ">= 0.90", ratio is not None and ratio >= 0.9))
    return lines


def inference_lines(infer: dict) -> list[tuple[str, float | None, str, bool]]:
    """(line, value, target, met) for inference speed, bf16 agreement and ETTA's cost."""
    ours = _row(infer.get("results", []), "ours")
    checks = [("inference: ours vs ref fp32 (x faster)", ours.get("speedup_vs_ref_fp32"), ">= 4.0", lambda v: v >= 4.0),
              ("inference: ours vs ref bf16 window batch 4 (x faster)", ours.get("speedup_vs_ref_bf16_sw4"), ">= 2.0",
               lambda v: v >= 2.0),
              ("inference: ours logits vs fp32 (relative L2)", ours.get("rel_err_vs_ref_fp32"), "<= 2e-2",
               lambda v: v <= 2e-2),
              ("inference: ours per-organ Dice vs fp32 (max difference)", ours.get("max_dice_diff_vs_ref_fp32"), "<= 0.005",
               lambda v: v <= 0.005),
              ("ETTA / plain inference (seconds per volume)", infer.get("etta", {}).get("ratio"), "<= 2.0",
               lambda v: v <= 2.0)]
    return [(name, value, target, value is not None and test(value)) for name, value, target, test in checks]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=Path, default=None, help="bench_train.py JSON (with --data_pipeline)")
    p.add_argument("--infer", type=Path, default=None, help="bench_infer.py JSON (with --etta)")
    args = p.parse_args(argv)
    lines = []
    if args.train:
        lines += training_lines(json.loads(args.train.read_text()))
    if args.infer:
        lines += inference_lines(json.loads(args.infer.read_text()))
    for name, value, target, met in lines:
        shown = "missing" if value is None else f"{value:.4g}"
        print(f"{'MET    ' if met else 'NOT MET'}  {name}: {shown} (target {target})")
    return 0 if lines and all(met for *_, met in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
