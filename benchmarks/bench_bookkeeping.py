"""Evaluation bookkeeping cost: time :func:`swinbob.infer.evaluate.run_evaluation` over N cases that all fail
(their image files do not exist), so that only the per-case records and the summary are timed.

Rewriting and fsyncing ``summary.json`` and ``metrics.csv`` after every case would be quadratic;
the evaluation appends rows per case and writes the summary once. Usage::

    PYTHONPATH=. python benchmarks/bench_bookkeeping.py --cases 2000 4000 8000
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from swinbob.infer import evaluate
from swinbob.data.transforms import DataConfig
from swinbob.data.inputs import Case
from swinbob.infer.window import WindowSettings
from swinbob.tasks import get_task


def time_failing_cases(count: int, folder: Path) -> float:
    """Seconds ``run_evaluation`` takes over ``count`` cases whose images are missing."""
    task = get_task("btcv")
    settings = evaluate.EvalSettings(task=task, data=DataConfig.from_task(task), output_dir=folder / f"out{count}",
                                     window=WindowSettings((64, 64, 64), 1, 0.5, None, "cpu"),
                                     methods=(evaluate.NO_ETTA,))
    cases = [Case(f"case{i:06d}", (str(folder / f"missing{i:06d}.nii.gz"),), str(folder / "label.nii.gz"))
             for i in range(count)]
    started = time.perf_counter()
    summary = evaluate.run_evaluation(torch.nn.Identity(), cases, settings)
    elapsed = time.perf_counter() - started
    assert summary["cases"]["failed"] == count
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[2000, 4000, 8000])
    args = parser.parse_args()
    logging.getLogger("swinbob").setLevel(logging.CRITICAL)  # 8,000 error lines would time the console
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.cases:
            print(f"{count} failing cases: {time_failing_cases(count, Path(tmp)):.1f} s", flush=True)


if __name__ == "__main__":
    main()
