"""Does ETTA help under domain shift? Train on clean BTCV phantoms, test on shifted ones, both ways.

1. Writes a clean synthetic BTCV cohort (seed 0) and a held-out, domain-shifted one (other anatomy,
   seed 1, ``DomainShift.preset(--shift)``: bias field, gamma, noise, intensity scale).
2. Trains a small Swin-UNETR on the clean cohort with ``swinbob.train.engine`` (the BTCV/main.py engine).
3. Evaluates with ``swinbob.infer.evaluate`` (the BTCV/test_etta.py engine) with ``--compare_etta`` on the
   clean validation cases (in-domain sanity check) and on every shifted case.
4. Prints mean Dice / HD95 with and without ETTA (optionally for several ETTA learning rates on
   the shifted cohort: ``--etta_lrs``), per-organ Dice on the shifted cohort, how often ETTA fell
   back to the source prediction, and writes ``results.json`` in the work folder. ``--etta_overlaps``
   compares adapted-window overlaps (``EttaConfig.overlap``) on both cohorts; it only matters when
   the adaptation box spans more than one ROI (not with the default one-ROI grid: use e.g.
   ``--roi 32 32 32``).

CPU default (coarse 1.75x3.5x4 mm grid so that a case is one ROI; ~1.3 training steps/s on 2
idle cores, so about 6 minutes; 17 minutes were measured on a machine shared with other jobs):

    python benchmarks/bench_etta_shift.py --overwrite --etta_lrs 1e-3 1e-2

On a GPU, more training makes the source model (and so the comparison) more meaningful:

    python benchmarks/bench_etta_shift.py --device cuda --steps 1500 --train_cases 24 --test_cases 12 --overwrite
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swinbob.infer import cli as eval_cli  # noqa: E402
import swinbob.train.cli as train_cli  # noqa: E402
from swinbob.infer.etta import EttaConfig  # noqa: E402
from swinbob.files import atomic_write_text  # noqa: E402
from swinbob.data.phantoms import DomainShift, write_cohort  # noqa: E402

MAJOR_ORGANS = ("spleen", "right_kidney", "left_kidney", "liver", "stomach", "aorta")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", default="runs/bench_etta_shift", help="cohorts, checkpoint and evaluations go here")
    p.add_argument("--overwrite", action="store_true", help="delete an existing --work_dir first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train_cases", type=int, default=12, help="clean cases (a quarter become validation cases)")
    p.add_argument("--test_cases", type=int, default=6, help="shifted, held-out cases")
    p.add_argument("--shift", default="strong", choices=["mild", "strong"])
    p.add_argument("--shape", type=int, nargs=3, default=[64, 32, 30], help="phantom grid (the torso is ~112 mm wide)")
    p.add_argument("--spacing", type=float, nargs=3, default=[1.75, 3.5, 4.0], help="task spacing for train and test (mm)")
    p.add_argument("--roi", type=int, nargs=3, default=[64, 32, 32])
    p.add_argument("--feature_size", type=int, default=12)
    p.add_argument("--steps", type=int, default=400, help="training steps (one patch each)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--etta_lrs", type=float, nargs="+", default=[EttaConfig().lr],
                   help="ETTA learning rates to compare on the shifted cohort (the first also on the clean one)")
    p.add_argument("--etta_overlaps", type=float, nargs="+", default=[EttaConfig().overlap],
                   help="adapted-window overlaps to compare on both cohorts (with the first learning rate)")
    return p.parse_args(argv)


def geometry_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--feature_size", str(args.feature_size), "--device", args.device, "--workers", "0"]
    for axis, roi, space in zip("xyz", args.roi, args.spacing):
        flags += [f"--roi_{axis}", str(roi), f"--space_{axis}", str(space)]
    return flags


def make_cohorts(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    clean = write_cohort("btcv", work / "clean", args.train_cases, tuple(args.shape), seed=args.seed, val_fraction=0.25)
    shifted = write_cohort("btcv", work / "shifted", args.test_cases, tuple(args.shape), seed=args.seed + 1,
                           shift=DomainShift.preset(args.shift), val_fraction=0.0)
    return clean, shifted


def train_model(args: argparse.Namespace, clean: Path, work: Path) -> Path:
    num_train = len(json.loads(clean.read_text())["training"])
    epochs = max(1, math.ceil(args.steps / num_train))
    argv = ["--data_dir", str(clean.parent), "--json_list", clean.name, "--logdir", str(work / "train"),
            "--max_epochs", str(epochs), "--max_steps_per_epoch", str(min(num_train, args.steps)),
            "--val_every", str(epochs), "--num_samples", "1", "--optim_lr", str(args.lr), "--warmup_epochs", "1",
            "--save_checkpoint", "--seed", str(args.seed), "--log_every", "50", *geometry_flags(args)]
    if train_cli.main(argv, default_task="btcv") != 0:
        raise SystemExit("training failed")
    return work / "train" / "model_final.pt"


def evaluate_cohort(args: argparse.Namespace, datalist: Path, split: str, checkpoint: Path, out: Path,
                    lr: float, compare: bool, overlap: float | None = None) -> dict:
    overlap = args.etta_overlaps[0] if overlap is None else overlap
    argv = ["--data_dir", str(datalist.parent), "--json_list", datalist.name, "--split", split,
            "--compare_etta" if compare else "--etta", "--etta_lr", str(lr), "--etta_seed", str(args.seed),
            "--etta_overlap", str(overlap),
            "--pretrained_dir", str(checkpoint.parent), "--pretrained_model_name", checkpoint.name,
            "--output_dir", str(out), *geometry_flags(args)]
    if eval_cli.main(argv, default_task="btcv") != 0:
        raise SystemExit(f"evaluation of {datalist} failed")
    return json.loads((out / "summary.json").read_text())


def overall(summary: dict, method: str, metric: str) -> str:
    stats = summary["metrics"][method][metric]["overall"]
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}" if stats["mean"] is not None else "n/a"


def rows(results: dict[str, dict]) -> list[tuple[str, str, dict]]:
    """(cohort, method label, summary-of-that-method) for the report, no-ETTA first."""
    out = []
    for key, summary in results.items():
        cohort, _, setting = key.partition("@")
        if "no_etta" in summary["metrics"]:
            out.append((cohort, "no ETTA", summary))
        out.append((cohort, f"ETTA {setting}", summary))
    return out


def report(results: dict[str, dict]) -> None:
    print("\n| cohort | method | cases | Dice (mean ± std over cases) | HD95 mm | ETTA fell back |")
    print("|---|---|---|---|---|---|")
    for cohort, label, summary in rows(results):
        method = "no_etta" if label == "no ETTA" else "etta"
        fallbacks = "" if method == "no_etta" else \
            f"{sum(1 for r in summary['etta'].values() if r.get('fallback'))}/{len(summary['etta'])}"
        print(f"| {cohort} | {label} | {summary['cases']['evaluated']} | {overall(summary, method, 'dice')} | "
              f"{overall(summary, method, 'hd95_mm')} | {fallbacks} |")
    print("\nshifted cohort, Dice per organ:")
    for cohort, label, summary in rows(results):
        if cohort == "shifted":
            method = "no_etta" if label == "no ETTA" else "etta"
            per_class = summary["metrics"][method]["dice"]["per_class"]
            cells = [f"{o} {per_class[o]['mean']:.3f}" if per_class[o]["mean"] is not None else f"{o} n/a" for o in MAJOR_ORGANS]
            print(f"  {label:22s} " + ", ".join(cells))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir)
    if work.exists():
        if not args.overwrite:
            raise SystemExit(f"{work} exists: pass --overwrite to replace it")
        shutil.rmtree(work)
    started = time.perf_counter()
    clean, shifted = make_cohorts(args, work)
    tic = time.perf_counter()
    checkpoint = train_model(args, clean, work)
    train_s = time.perf_counter() - tic
    first, first_overlap = args.etta_lrs[0], args.etta_overlaps[0]
    results = {f"clean@lr {first:g}, overlap {first_overlap:g}":
               evaluate_cohort(args, clean, "validation", checkpoint, work / "eval_clean", first, True)}
    for overlap in args.etta_overlaps[1:]:
        results[f"clean@lr {first:g}, overlap {overlap:g}"] = evaluate_cohort(
            args, clean, "validation", checkpoint, work / f"eval_clean_ov{overlap:g}", first, False, overlap)
    for index, lr in enumerate(args.etta_lrs):
        out = work / f"eval_shifted_lr{lr:g}"
        results[f"shifted@lr {lr:g}, overlap {first_overlap:g}"] = evaluate_cohort(
            args, shifted, "training", checkpoint, out, lr, index == 0)
    for overlap in args.etta_overlaps[1:]:
        results[f"shifted@lr {first:g}, overlap {overlap:g}"] = evaluate_cohort(
            args, shifted, "training", checkpoint, work / f"eval_shifted_ov{overlap:g}", first, False, overlap)
    report(results)
    timing = {"train_s": round(train_s, 1), "total_s": round(time.perf_counter() - started, 1)}
    print(f"\ntraining {timing['train_s']} s, total {timing['total_s']} s, device {args.device}")
    atomic_write_text(work / "results.json", json.dumps({"args": vars(args), "timing": timing, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
