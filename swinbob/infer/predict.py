"""``swinbob predict -i IN_DIR -o OUT_DIR -m CHECKPOINT``: segment every scan of a folder.

One command from images to masks, as TotalSegmentator and nnU-Net's predictor offer: the task,
preprocessing and network come from the checkpoint, every ``.nii``/``.nii.gz`` in ``IN_DIR``
(multi-channel tasks: ``<case>_<channel>.nii.gz``) gets ``OUT_DIR/predictions/<case>.nii.gz`` in
its own geometry; ``--save_probabilities`` adds ``OUT_DIR/probabilities/<case>.nii.gz`` and
``--statistics`` ``OUT_DIR/statistics.json``. It runs the evaluation engine
(:mod:`swinbob.infer.evaluate`) on the folder, without adaptation unless ``--etta`` or ``--tta_adapt`` is given.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from swinbob import cli

from swinbob.infer import cli as eval_cli
from swinbob.infer.parts import add_part_args
from swinbob.infer.selftrain import ADAPT_CHOICES
from swinbob.infer.tta import TTA_CHOICES

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """``-i``, ``-o``, ``-m`` plus the few options people use with folder prediction."""
    parser = argparse.ArgumentParser(prog="swinbob predict", description=__doc__.split("\n\n")[0],
                                     epilog=eval_cli.EXIT_CODES, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-i", "--input", required=True, help="folder of NIfTI scans")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("-m", "--model", required=True, help="checkpoint file (model.pt / model_final.pt)")
    parser.add_argument("--save_probabilities", action="store_true", help="also write class probabilities (X,Y,Z,C)")
    parser.add_argument("--statistics", action="store_true", help="volume, voxels, mean intensity, components, bbox per structure")
    parser.add_argument("--etta", action="store_true", help="adapt to each scan with ETTA (slower)")
    parser.add_argument("--tta_adapt", choices=ADAPT_CHOICES, default=None,
                        help="adapt to each scan with this method (entropy = --etta; selftrain: see docs/adaptation.md)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none", help="flip: mirror averaging over the 3 axes (8 passes)")
    parser.add_argument("--overwrite", action="store_true", help="redo scans whose prediction exists")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if available)")
    parser.add_argument("--infer_overlap", type=float, default=None, help="sliding-window overlap (default: the task's)")
    parser.add_argument("--sw_batch_size", type=cli.sw_batch_value, default="auto",
                        help="windows per forward pass (auto: from free GPU memory, 4 on the CPU)")
    cli.add_compile_args(parser)
    parser.add_argument("--workers", type=int, default=0, help="processes loading scans ahead")
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                        help="read the next scan and write the last one's outputs in threads while the model runs")
    add_part_args(parser)
    return parser


def evaluate_argv(args: argparse.Namespace) -> list[str]:
    """The equivalent ``test_etta.py`` command line."""
    model = Path(args.model)
    argv = [f"--input_dir={args.input}", f"--output_dir={args.output}", f"--pretrained_dir={model.parent}",
            f"--pretrained_model_name={model.name}", f"--sw_batch_size={args.sw_batch_size}", f"--workers={args.workers}"]
    argv.append("--etta" if args.etta or args.tta_adapt else "--no_etta")
    if args.tta_adapt:
        argv.append(f"--tta_adapt={args.tta_adapt}")
    argv.append(f"--tta={args.tta}")
    argv.append(f"--compile={args.compile}")
    argv.append("--overlap" if args.overlap else "--no-overlap")
    if args.compile_cache:
        argv.append(f"--compile_cache={args.compile_cache}")
    for flag in ("save_probabilities", "statistics", "overwrite"):
        if getattr(args, flag):
            argv.append(f"--{flag}")
    if args.device:
        argv.append(f"--device={args.device}")
    if args.infer_overlap is not None:
        argv.append(f"--infer_overlap={args.infer_overlap}")
    for flag in ("num_parts", "part_id"):
        if getattr(args, flag) is not None:
            argv.append(f"--{flag}={getattr(args, flag)}")
    return argv


def main(argv: Sequence[str] | None = None, default_task: str = "ukbob") -> int:
    """Exit codes as ``test_etta.py``: 0 done, 1 every scan failed, 2 configuration error."""
    args = build_parser().parse_args(argv)
    if not Path(args.input).is_dir():
        log.error("configuration error: -i/--input: %s is not a folder", args.input)
        return 2
    return eval_cli.main(evaluate_argv(args), default_task=default_task)


if __name__ == "__main__":
    raise SystemExit(main())
