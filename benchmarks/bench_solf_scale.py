"""Time SOLF's merge + decide + dataset.json at UK Biobank size (51,761 scans × 72 organs).

Step 1 (a child process, not timed): write pass-1 shard logs exactly as ``--stage features``
writes them (JSON lines, one record per scan, every TotalVibeSegmentator ID 1..72 present with
all shape columns and the 8 Dixon intensity columns). Feature values are drawn from 512 distinct
random scans (so generating 2 GB of logs takes minutes, not hours); every case has its own id.

Step 2 (this process, timed, peak memory = this process's maximum resident set): the library
functions ``--stage decide`` runs, in order: read every shard log, pick the current record of each
case, build the columnar table, write features.csv and scans.csv (merge); pass 2 (``decide``);
decisions.csv, summary.json, the cleaning tasks, the train/validation split and dataset.json.
Not included: writing the cleaned NIfTI files, which is per-scan work that parallelises like
pass 1 (``--workers``), and the figure (``--no_figure``).

    python benchmarks/bench_solf_scale.py [--scans 51761] [--shards 100] [--workdir /tmp/solf_scale]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swinbob.labels import TOTALVIBE_LABELS  # noqa: E402
from swinbob.solf.decide import decide  # noqa: E402
from swinbob.solf.features import SHAPE_COLUMNS  # noqa: E402
from swinbob.solf.outputs import (clean_tasks, dataset_json, split_cases, summary, write_decisions_csv,  # noqa: E402
                                  write_json)
from swinbob.solf.rules import load_rules  # noqa: E402
from swinbob.solf.store import (build_table, read_records, select_current, shard_log_path,  # noqa: E402
                                write_features_csv, write_scans_csv)

CHANNELS = ("fat", "in_phase", "opposed_phase", "water")
DISTINCT = 512


def _organs(rng: np.random.Generator) -> dict[str, list]:
    """One scan's organ columns with plausible magnitudes (all 72 IDs)."""
    n = len(TOTALVIBE_LABELS) - 1
    size = rng.lognormal(8, 1.5, n)
    cols: dict[str, np.ndarray] = {name: rng.normal(0, 50, n) for name in SHAPE_COLUMNS}
    cols.update({"voxel_count": np.round(size), "volume_mm3": np.round(size) * 6.0, "surface_mm2": size ** (2 / 3) * 20,
                 "sphericity": rng.uniform(0.4, 0.7, n), "eccentricity": rng.uniform(0.3, 0.95, n),
                 "n_components": np.ones(n), "largest_share": np.ones(n), "touches_border": np.zeros(n)})
    base = np.random.default_rng(123).normal(0, 150, (3, n))  # organs keep their place; RAS: right at +x
    side = np.array([1 if name.endswith("_right") else -1 if name.endswith("_left") else 0 for name in
                     list(TOTALVIBE_LABELS.values())[1:]])
    base[0] = np.where(side != 0, side * (20 + np.abs(base[0])), base[0])
    for axis, centre in zip("xyz", base):
        cols[f"centroid_{axis}"] = centre + rng.normal(0, 5, n)
    for name in ("surface_mm2", "sphericity", "eccentricity"):
        cols[f"main_{name}"] = cols[name]
    for key in ("centroid_x", "centroid_y", "centroid_z"):
        cols[f"main_{key}"] = cols[key]
    for channel in CHANNELS:
        cols[f"mean_{channel}"], cols[f"std_{channel}"] = rng.normal(300, 80, n), rng.uniform(5, 60, n)
    return {"label": list(range(1, n + 1)), **{k: v.tolist() for k, v in cols.items()}}


def generate(workdir: Path, scans: int, shards: int) -> None:
    """Write the shard logs (skipped when a complete set for these sizes exists)."""
    done = workdir / f"done-{scans}-{shards}"
    if done.exists():
        return
    features = workdir / "features"
    features.mkdir(parents=True, exist_ok=True)
    for old in features.glob("shard-*.jsonl"):
        old.unlink()
    rng = np.random.default_rng(0)
    blocks = [json.dumps(_organs(rng), separators=(",", ":")) for _ in range(DISTINCT)]
    handles = [open(shard_log_path(features, s, shards), "w") for s in range(shards)]
    for index in range(scans):
        head = {"case_id": f"{1000000 + index}_20201_2_0", "status": "ok", "reason": "", "fingerprint": f"fp{index}",
                "shape": [224, 174, 370], "spacing": [2.232, 2.232, 3.0], "orientation": "LPS"}
        text = json.dumps(head, separators=(",", ":"))[:-1] + ',"organs":' + blocks[index % DISTINCT] + "}\n"
        handles[index % shards].write(text)
    for handle in handles:
        handle.close()
    done.touch()


def peak_gb() -> float:
    """Peak resident memory of this process so far (GB; Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run(workdir: Path, scans: int) -> dict[str, float]:
    """Time the merge, decide and output stages; returns seconds per stage and peak memory."""
    times: dict[str, float] = {}
    report, out = workdir / "report", workdir / "out"
    start, cpu = time.perf_counter(), time.process_time()
    logged = read_records(workdir / "features")
    records, missing = select_current(logged, {c: next(iter(fps)) for c, fps in logged.items()})
    del logged
    table = build_table(records)
    del records
    times["read + build table"] = time.perf_counter() - start
    mark = time.perf_counter()
    write_features_csv(table, report / "features.csv")
    write_scans_csv(table, report / "scans.csv")
    times["features.csv + scans.csv"] = time.perf_counter() - mark
    mark = time.perf_counter()
    rules = load_rules()
    decisions = decide(table, rules)
    times["decide (ours)"] = time.perf_counter() - mark
    mark = time.perf_counter()
    write_decisions_csv(report / "decisions.csv", table, decisions)
    times["decisions.csv"] = time.perf_counter() - mark
    mark = time.perf_counter()
    excluded = set(np.asarray(table.case_ids)[decisions.scan_excluded].tolist())
    included = [c for c in table.case_ids if c not in excluded]
    sources = {c: workdir / "labels" / f"{c}.nii.gz" for c in table.case_ids}
    cleaning = clean_tasks(table, decisions, out / "labelsTr", included, sources)
    train, validation = split_cases(included, 0.1, 0)
    images = {c: tuple(str(workdir / "images" / f"{c}_{ch}.nii.gz") for ch in CHANNELS) for c in included}
    label_files = {t.case_id: Path(t.output_path) for t in cleaning}
    write_json(out / "dataset.json", dataset_json(out / "dataset.json", train, validation, label_files, images, CHANNELS))
    write_json(report / "summary.json", summary(table, decisions, rules, (train, validation), []))
    times["summary + cleaning tasks + dataset.json"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start
    times["total CPU time of this process"] = time.process_time() - cpu
    times["rows"] = float(table.columns["label"].size)
    times["rejected"] = float(np.sum(decisions.decision == "rejected"))
    times["peak_gb"] = peak_gb()
    return times


def main(argv: list[str] | None = None) -> int:
    """Generate (child process), then time; exit 1 if over ``--max_seconds`` or ``--max_gb``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=51761)
    parser.add_argument("--shards", type=int, default=100, help="pass-1 shard logs (array jobs)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/solf_scale"))
    parser.add_argument("--max_seconds", type=float, default=300.0)
    parser.add_argument("--max_gb", type=float, default=4.0)
    parser.add_argument("--generate_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate_only:
        generate(args.workdir, args.scans, args.shards)
        return 0
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--generate_only", "--scans", str(args.scans), "--shards",
                    str(args.shards), "--workdir", str(args.workdir)], check=True)
    size = sum(p.stat().st_size for p in (args.workdir / "features").glob("*.jsonl"))
    print(f"shard logs: {args.scans} scans in {args.shards} shards, {size / 1e9:.2f} GB "
          f"(generated in {time.perf_counter() - start:.0f} s, not timed); CPUs usable: {len(os.sched_getaffinity(0))}")
    result = run(args.workdir, args.scans)
    for key, value in result.items():
        print(f"{key:42s} {value:12.2f}")
    ok = result["total"] <= args.max_seconds and result["peak_gb"] <= args.max_gb
    print(f"merge + decide + dataset.json: {result['total']:.0f} s (target <= {args.max_seconds:g}), "
          f"peak {result['peak_gb']:.2f} GB (target <= {args.max_gb:g}): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
