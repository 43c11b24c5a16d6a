"""``organ_filtering.py``: SOLF's flags and entry point, resolved into a :class:`SolfConfig`.

Exit status: 0 on success; 1 when every scan failed, no cleaned label could be written, or a
write failed; 2 for configuration errors (see :mod:`swinbob.solf.pipeline`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from swinbob.cli import add_limit_args, apply_limit_args
from swinbob.errors import ConfigError
from swinbob.files import disk_full
from swinbob.runtime.interrupt import EXIT_INTERRUPTED
from swinbob.runtime.logs import configure_logging
from swinbob.solf.labelsets import LabelSetError
from swinbob.solf.pipeline import STAGES, SolfConfig, run_solf
from swinbob.solf.pool import available_cpus
from swinbob.solf.rules import METHODS, RulesError
from swinbob.tasks import UKBOB_CHANNELS

log = logging.getLogger("swinbob.solf")


def build_parser() -> argparse.ArgumentParser:
    """The ``organ_filtering.py`` argument parser (upstream flags plus the pipeline's own)."""
    p = argparse.ArgumentParser(prog="organ_filtering.py", description="SOLF: clean TotalVibeSegmentator label maps "
                                "into a training set (features, decisions, cleaned labels, dataset.json, report).")
    p.add_argument("--input_dir", type=Path, default=Path("./data/labels"), help="label maps {case}.nii.gz (default: %(default)s)")
    p.add_argument("--output_dir", type=Path, default=Path("./data/cleaned"),
                   help="cleaned labelsTr/, dataset.json and resume state (default: %(default)s)")
    p.add_argument("--image_dir", type=Path, default=None, help="Dixon images {case}_{channel}.nii.gz or {case}_0000.nii.gz")
    p.add_argument("--report", type=Path, default=None, help="report folder (default: OUTPUT_DIR/report)")
    p.add_argument("--channel_names", default=None, help="image channels in order (default: the --labels dataset.json's "
                   f"channel_names, else {','.join(UKBOB_CHANNELS)}, or one channel when the images are named like the labels)")
    p.add_argument("--stage", choices=STAGES, default="all",
                   help="features: pass 1 only; merge: shard logs -> features.csv; decide: merge + pass 2 (default: all)")
    p.add_argument("--merge", action="store_true", help="same as --stage merge")
    p.add_argument("--workers", type=int, default=min(8, available_cpus()), help="worker processes, 1 = no pool (default: %(default)s)")
    p.add_argument("--num_shards", type=int, default=1, help="split pass 1 into this many array jobs (default: 1)")
    p.add_argument("--shard_id", type=int, default=0, help="this job's shard, 0-based (default: 0)")
    p.add_argument("--max_scans", type=int, default=None, help="measure at most this many new scans in this run")
    p.add_argument("--labels", default=None, help="label set: totalvibe (default), totalsegmentator, or a file "
                   "(dataset.json labels block, JSON or CSV id,name); organ rules and left/right pairs follow its names")
    p.add_argument("--method", choices=METHODS, default=None, help="decision rule: ours (default), paper (two of three "
                   "features beyond the epsilon percentiles), both (rejected if either flags; reasons kept apart)")
    p.add_argument("--epsilon", type=float, default=None, help="paper rule: percent of each tail out of range (default: 2)")
    p.add_argument("--body_dir", type=Path, default=None, help="body masks {case}.nii.gz: the paper rule's body volume "
                   "(default: the union of all labels of the scan)")
    p.add_argument("--rules", type=Path, default=None, help="JSON (or YAML) file overriding the organ rules")
    p.add_argument("--dump_rules", action="store_true", help="print the effective rules as JSON and exit")
    p.add_argument("--mad_threshold", type=float, default=None, help="robust z limit for shape outliers (default: 4.5)")
    p.add_argument("--position_threshold", type=float, default=None, help="robust z limit for position (default: 4.5)")
    p.add_argument("--max_rejected_fraction", type=float, default=None,
                   help="exclude scans with a larger share of rejected organs (default: 0.25)")
    p.add_argument("--min_rejected_to_exclude", type=int, default=None, help="and at least this many rejected "
                   "organs (default: 1; 3 for a --labels set); 1 with --max_rejected_fraction 0 leaves out every "
                   "scan with a rejected organ")
    p.add_argument("--min_population", type=int, default=None, help="scans needed for population tests (default: 20)")
    p.add_argument("--no_swap_repair", action="store_true", help="ignore (255) a left/right pair inverted as a whole "
                   "instead of exchanging its labels (default: exchanged when nothing else is wrong with either)")
    p.add_argument("--seed", type=int, default=0, help="train/validation split seed (default: 0)")
    p.add_argument("--val_fraction", type=float, default=0.1, help="share of included scans for validation (default: 0.1)")
    p.add_argument("--overwrite", action="store_true", help="re-measure every scan and rewrite every output")
    p.add_argument("--no_figure", action="store_true", help="skip the PNG report figure and the previews")
    p.add_argument("--max_previews", type=int, default=100,
                   help="report/previews/: one PNG per rejected or swapped organ, at most this many, 0 = none (default: %(default)s)")
    p.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_limit_args(p)
    return p


def config_from_args(args: argparse.Namespace) -> SolfConfig:
    """:class:`SolfConfig` from parsed flags."""
    return SolfConfig(
        input_dir=args.input_dir, output_dir=args.output_dir, image_dir=args.image_dir, report_dir=args.report,
        channel_names=None if args.channel_names is None else tuple(c.strip() for c in args.channel_names.split(",") if c.strip()),
        stage="merge" if args.merge else args.stage, workers=args.workers, num_shards=args.num_shards,
        shard_id=args.shard_id, rules_path=args.rules, mad_threshold=args.mad_threshold,
        position_threshold=args.position_threshold, max_rejected_fraction=args.max_rejected_fraction,
        min_population=args.min_population, seed=args.seed, val_fraction=args.val_fraction,
        max_scans=args.max_scans, overwrite=args.overwrite, figure=not args.no_figure, labels=args.labels,
        method=args.method, epsilon=args.epsilon, max_previews=args.max_previews, body_dir=args.body_dir,
        repair_swaps=False if args.no_swap_repair else None,
        min_rejected_to_exclude=args.min_rejected_to_exclude)


def organ_filtering_entry(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``UKBOB/filtering/organ_filtering.py``; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    config = config_from_args(args)
    try:
        apply_limit_args(args)
        if args.dump_rules:
            print(json.dumps(config.rules().to_json(), indent=2))
            return 0
        return run_solf(config)
    except (ConfigError, RulesError, LabelSetError, ValueError) as exc:
        log.error("configuration error: %s", exc)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; what was measured is in the logs
        log.error("interrupted (Ctrl-C): finished scans are kept; the same command resumes")
        return EXIT_INTERRUPTED
    except OSError as exc:  # a full disk, a vanished share: the run stops; a rerun resumes from the logs
        where = exc.filename or config.output_dir
        hint = "free some space and run again: finished scans are kept" if disk_full(exc) else "run again once fixed"
        log.error("run failed writing %s: %s (%s)", where, exc.strerror or exc, hint)
        return 1
