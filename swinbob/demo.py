"""``make demo``: the whole pipeline end to end on a synthetic cohort, on the CPU, in minutes.

Each stage calls the same entry point a user would call from the command line, so the demo is
also a worked example of the commands (they are printed before they run).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from swinbob import phantoms
from swinbob.data import DataConfig, eval_transforms, load_datalist
from swinbob.inference import sliding_window_logits
from swinbob.model import ModelConfig, build_model
from swinbob.tasks import get_task

log = logging.getLogger("swinbob.demo")


def _stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def make_cohorts(out_dir: Path, num_cases: int, seed: int) -> Path:
    """Write the synthetic UKBOB cohort that the rest of the demo uses; returns its dataset.json."""
    return phantoms.write_cohort("ukbob", out_dir / "ukbob_raw", num_cases, seed=seed, overwrite=True)


def forward_pass(datalist: Path) -> None:
    """Preprocess every case and run a tiny Swin-BOB over it by sliding window; print shapes."""
    task = get_task("ukbob")
    config = DataConfig.from_task(task, roi=(64, 64, 64))
    model = build_model(ModelConfig.from_task(task, feature_size=12, roi=(64, 64, 64))).eval()
    transforms = eval_transforms(task, config)
    for entry in load_datalist(datalist, datalist.parent) + load_datalist(datalist, datalist.parent, "validation"):
        item = transforms(entry)
        with torch.no_grad():
            logits = sliding_window_logits(model, item["image"][None], config.roi, sw_batch_size=2)
        print(f"{Path(entry['label']).name}: image {tuple(item['image'].shape)} -> logits {tuple(logits.shape)}")


def main(argv: list[str] | None = None) -> int:
    """Run every stage of the demo into ``--out_dir``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--num_cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    start = _stage("1. synthetic UKBOB cohort")
    datalist = make_cohorts(args.out_dir, args.num_cases, args.seed)
    _stage("2. Swin-BOB forward pass over the cohort")
    forward_pass(datalist)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
