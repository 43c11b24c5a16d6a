"""Plot reference vs ours from bench_train.py / bench_infer.py JSON results into assets/perf.png.

    python benchmarks/plot_results.py --train train.json --infer infer.json --out assets/perf.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {
    "ref": "reference\nfp16 AMP", "ref_bf16": "reference\nbf16", "ours": "ours\n(engine)", "ours_sw4": "ours\nsw batch 4",
    "bf16_sdpa": "bf16+SDPA", "bf16_sdpa_cl": "bf16+SDPA\n+NDHWC", "bf16_sdpa_compile": "bf16+SDPA\n+compile",
    "ref_fp32": "reference\nfp32", "ref_tf32": "reference\nTF32", "ref_bf16_sw4": "reference\nbf16 sw4",
    "ref_bf16_sw16": "reference\nbf16 sw16", "ours_eager": "ours\n(no compile)", "ours_cudagraphs": "ours\n+CUDA graphs",
}


def _color(variant: str) -> str:
    return "#9e9e9e" if variant.startswith("ref") else "#1f77b4"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", nargs="*", default=[], help="bench_train.py JSON file(s)")
    p.add_argument("--infer", nargs="*", default=[], help="bench_infer.py JSON file(s)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "assets" / "perf.png"))
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_rows = [r for f in args.train for r in json.loads(Path(f).read_text())["results"] if "patches_per_s" in r]
    infer = [json.loads(Path(f).read_text()) for f in args.infer]
    infer_rows = [r for d in infer for r in d["results"] if "seconds" in r]
    outputs = sorted({r["out_channels"] for r in train_rows})
    panels = len(outputs) + (1 if infer_rows else 0)
    if not panels:
        raise SystemExit("nothing to plot")
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8), squeeze=False)
    axes = axes[0]
    gpu = ""
    for ax, out_channels in zip(axes, outputs):
        rows = [r for r in train_rows if r["out_channels"] == out_channels]
        ref = next((r["patches_per_s"] for r in rows if r["variant"] == "ref"), None)
        names = [LABELS.get(r["variant"], r["variant"]) for r in rows]
        values = [r["patches_per_s"] for r in rows]
        bars = ax.bar(names, values, color=[_color(r["variant"]) for r in rows])
        for bar, r in zip(bars, rows):
            text = f"{r['patches_per_s']:.1f}" + (f"\n{r['patches_per_s'] / ref:.2f}x" if ref else "") + f"\n{r['peak_gib']:.1f} GiB"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, max(values) * 1.45)
        ax.set_title(f"training, {out_channels} outputs\n96³ batch 4 (higher is better)", fontsize=9)
        ax.set_ylabel("patches / s")
        ax.tick_params(axis="x", labelsize=7)
    for f in args.train:
        gpu = json.loads(Path(f).read_text())["environment"].get("gpu", gpu)
    if infer_rows:
        ax = axes[-1]
        base = next((r["seconds"] for r in infer_rows if r["variant"] == "ref_fp32"), None)
        names = [LABELS.get(r["variant"], r["variant"]) for r in infer_rows]
        values = [r["seconds"] for r in infer_rows]
        bars = ax.bar(names, values, color=[_color(r["variant"]) for r in infer_rows])
        for bar, r in zip(bars, infer_rows):
            text = f"{r['seconds']:.2f} s" + (f"\n{base / r['seconds']:.1f}x" if base else "")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
        etta = next((d["etta"] for d in infer if "etta" in d), None)
        if etta:
            ax.axhline(etta["seconds"], color="#ff7f0e", lw=1, ls="--",
                       label=f"ours + ETTA (defaults): {etta['seconds']:.2f} s = {etta['ratio']:.2f}x ours")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_ylim(0, max(values + ([etta["seconds"]] if etta else [])) * 1.3)
        volume = "×".join(str(v) for v in infer[0]["settings"]["volume"])
        ax.set_title(f"sliding-window inference, {volume}\noverlap 0.5 (lower is better)", fontsize=9)
        ax.set_ylabel("seconds / volume")
        ax.tick_params(axis="x", labelsize=7)
        gpu = gpu or infer[0]["environment"].get("gpu", "")
    fig.suptitle(f"Swin-BOB (SwinUNETR, feature_size 48): reference vs ours, same run\n{gpu}", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
