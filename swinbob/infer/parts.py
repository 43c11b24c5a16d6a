"""Prediction split into parts: ``--num_parts N --part_id K``, one journal per part, one merge.

Any mix of processes, GPUs (``torchrun``: rank = part), nodes and SLURM array tasks can share one
output folder. Part ``K`` of ``N`` takes every ``N``-th case of the cases sorted by name, starting
at the ``K``-th, so the parts cover every case exactly once whatever runs them. Each part

* holds its own lock (``.swinbob.part-K-of-N.lock``) plus a *shared* lock on the folder's
  ``.swinbob.lock``: parts run side by side, a single-process run into the folder is refused, and
  since parts own disjoint cases no file ever has two writers;
* appends one line per finished case to ``parts/part-K-of-N/records.jsonl`` (metric rows,
  statistics, ETTA record), after the case's files are in place: a part killed at any moment
  (``SIGKILL``, pre-emption) and run again redoes only the cases without a record;
* writes ``parts/part-K-of-N/summary.json`` when it ends.

When every part of ``N`` has ended, the part that ends last (or ``swinbob merge OUT_DIR``, or rank 0
under ``torchrun``) writes ``metrics.csv``, ``statistics.json`` and ``summary.json`` into the folder:
the files one process would have written, case order included. Statistics of cases that the folder
already lists and that no part redid are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swinbob.errors import ConfigError
from swinbob.files import atomic_write_text, folder_lock
from swinbob.infer.metrics import MetricsLog, json_ready, metrics_csv, summarize

log = logging.getLogger(__name__)

PARTS_FOLDER = "parts"
RECORDS = "records.jsonl"
MERGE_LOCK = ".swinbob.merge.lock"
_PART_NAME = re.compile(r"part-(\d+)-of-(\d+)")
T = TypeVar("T")


@dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"--num_parts must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"--part_id must be in 0..{self.count - 1} (--num_parts {self.count}), got {self.index}")

    @property
    def name(self) -> str:
        return f"part-{self.index}-of-{self.count}"

    def folder(self, output_dir: Path) -> Path:
        """Where this part keeps its journal, summary and log."""
        return Path(output_dir) / PARTS_FOLDER / self.name

    @property
    def lock_name(self) -> str:
        return f".swinbob.{self.name}.lock"


def select_part(names: Sequence[str], part: Part) -> list[int]:
    """Positions (in ``names``' order) of the cases of ``part``: every ``count``-th name in sorted
    order, starting at the ``index``-th. Deterministic, disjoint, and together complete."""
    ranked = sorted(range(len(names)), key=lambda i: (names[i], i))
    return sorted(ranked[part.index::part.count])


def part_from_flags(num_parts: int | None, part_id: int | None) -> Part | None:
    """The part of ``--num_parts/--part_id``, else of ``torchrun`` (``RANK``/``WORLD_SIZE``); None for
    a single process. ``--part_id`` without ``--num_parts`` (or the reverse) is a :class:`ConfigError`."""
    if num_parts is None and part_id is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world > 1 and "RANK" in os.environ:
            return Part(int(os.environ["RANK"]), world)
        return None
    if num_parts is None or part_id is None:
        raise ConfigError("give --num_parts and --part_id together (e.g. --num_parts 4 --part_id 0)")
    part = Part(part_id, num_parts)
    return part if part.count > 1 else None


def add_part_args(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--num_parts N --part_id K`` (default under torchrun: WORLD_SIZE and RANK)."""
    group.add_argument("--num_parts", type=int, default=None,
                       help="split the cases into N parts run by separate processes/nodes/array tasks into one "
                            "output folder (default: WORLD_SIZE under torchrun, else 1)")
    group.add_argument("--part_id", type=int, default=None, help="which part this process runs, 0..N-1 (default: RANK under torchrun)")


# ----------------------------------------------------------------------------------------------
# The journal of one part
# ----------------------------------------------------------------------------------------------

def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a journal; a last line cut by a kill (no newline, or not JSON) is dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.split("\n")[:-1]:  # only complete lines
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class Journal:
    """``records.jsonl`` of one part: one JSON line per finished case, flushed and fsynced, so that
    a record means the case's files are complete. A torn last line (killed mid-append) is cut off
    when the journal is opened again."""

    def __init__(self, path: Path, reset: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if reset:
            path.unlink(missing_ok=True)
        self.records = read_records(path)
        if path.exists():
            data = path.read_bytes()
            complete = data.rfind(b"\n") + 1
            if complete != len(data):
                with open(path, "r+b") as handle:
                    handle.truncate(complete)
        self._handle = open(path, "a", encoding="utf-8")

    def done(self) -> set[str]:
        return {r["case"] for r in self.records}

    def append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")  # NaN kept (unscored Dice), as the rows hold it
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._handle.close()


def journaled_cases(output_dir: Path) -> set[str]:
    """Cases with a record in any part's journal of ``output_dir`` (whatever ``N`` wrote it)."""
    done: set[str] = set()
    for path in (Path(output_dir) / PARTS_FOLDER).glob(f"part-*-of-*/{RECORDS}"):
        done |= {r["case"] for r in read_records(path)}
    return done


# ----------------------------------------------------------------------------------------------
# Merge
# ----------------------------------------------------------------------------------------------

def part_counts(output_dir: Path) -> list[int]:
    """The ``N`` of every ``parts/part-K-of-N`` folder in ``output_dir``, sorted."""
    found = {int(m.group(2)) for p in (Path(output_dir) / PARTS_FOLDER).glob("part-*-of-*")
             if (m := _PART_NAME.fullmatch(p.name))}
    return sorted(found)


def _summary(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def unfinished_parts(output_dir: Path, count: int) -> list[str]:
    """Parts of ``count`` that have not ended (no summary, or one of an interrupted run)."""
    missing = []
    for index in range(count):
        summary = _summary(Part(index, count).folder(output_dir))
        if summary is None or "interrupted" in summary:
            missing.append(Part(index, count).name)
    return missing


def _ordered(items: dict[str, T], order: dict[str, int]) -> dict[str, T]:
    return dict(sorted(items.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def merge_parts(output_dir: str | os.PathLike, count: int) -> dict[str, Any]:
    """Write ``metrics.csv``, ``statistics.json`` and ``summary.json`` of ``output_dir`` from its
    ``count`` parts (which must all have ended); returns the merged summary.

    Records come from every journal in the folder (a case redone later wins); cases are ordered as
    the single-process run orders them (its input order). Held under a merge lock, so two parts
    ending together write one after the other, the same content.
    """
    output_dir = Path(output_dir)
    missing = unfinished_parts(output_dir, count)
    if missing:
        raise ConfigError(f"{output_dir}: part(s) {', '.join(missing)} have not finished; run them (again) first")
    with folder_lock(output_dir, "output folder", name=MERGE_LOCK, wait=True):
        summaries = [_summary(Part(i, count).folder(output_dir)) or {} for i in range(count)]
        order: dict[str, int] = {}
        for summary in summaries:
            order.update(summary.get("part", {}).get("case_index", {}))
        journals = sorted((output_dir / PARTS_FOLDER).glob(f"part-*-of-*/{RECORDS}"), key=lambda p: p.stat().st_mtime_ns)
        records: dict[str, dict] = {}
        for path in journals:
            for record in read_records(path):
                records[record["case"]] = record
        records = _ordered({k: v for k, v in records.items() if k in order}, order)
        merged = _merged_summary(summaries, records, order)
        rows = [row for r in records.values() for row in r.get("rows", [])]
        if rows:  # rows an earlier run wrote for other cases are kept, as a single process keeps them
            kept = MetricsLog(output_dir / "metrics.csv", redone=set(records))._kept_rows()
            atomic_write_text(output_dir / "metrics.csv", metrics_csv([]) + kept + metrics_csv(rows, header=False))
        statistics = {name: r["statistics"] for name, r in records.items() if "statistics" in r}
        if statistics:
            previous = _read_json(output_dir / "statistics.json")
            kept = {k: v for k, v in previous.items() if k not in statistics}
            atomic_write_text(output_dir / "statistics.json", json.dumps(json_ready({**kept, **statistics}), indent=2) + "\n")
        atomic_write_text(output_dir / "summary.json", json.dumps(json_ready(merged), indent=2) + "\n")
    log.info("merged %d part(s) into %s: %d case(s) evaluated, %d failed", count, output_dir,
             merged["cases"]["evaluated"], merged["cases"]["failed"])
    return merged


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _merged_summary(summaries: list[dict], records: dict[str, dict], order: dict[str, int]) -> dict[str, Any]:
    """The single-process summary: counters summed, lists in case order, metrics over every record."""
    first = summaries[0]
    merged = {k: v for k, v in first.items() if k not in ("part", "elapsed_s", "metrics")}
    merged["cases"] = {key: sum(s.get("cases", {}).get(key, 0) for s in summaries)
                       for key in ("total", "evaluated", "failed", "skipped")}
    failures = [f for s in summaries for f in s.get("failures", [])]
    merged["failures"] = sorted(failures, key=lambda f: order.get(f["case"], len(order)))
    merged["skipped"] = sorted((n for s in summaries for n in s.get("skipped", [])), key=lambda n: order.get(n, len(order)))
    merged["etta"] = {name: r["etta"] for name, r in records.items() if r.get("etta")}
    merged["elapsed_s"] = max((s.get("elapsed_s", 0.0) for s in summaries), default=0.0)
    rows = [row for r in records.values() for row in r.get("rows", [])]
    methods = first.get("methods", [])
    merged["metrics"] = {m: summarize([r for r in rows if r["method"] == m]) for m in methods if rows}
    return merged


def merge_main(argv: Sequence[str] | None = None) -> int:
    """``swinbob merge OUT_DIR [--num_parts N]``: 0 merged, 2 nothing to merge or parts unfinished."""
    parser = argparse.ArgumentParser(prog="swinbob merge", description="combine the parts of a split prediction "
                                     "(--num_parts) into one metrics.csv, statistics.json and summary.json")
    parser.add_argument("output_dir", help="the output folder the parts wrote into")
    parser.add_argument("--num_parts", type=int, default=None, help="N of the parts to merge (default: the only N found)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("swinbob").setLevel(logging.INFO)
    counts = part_counts(Path(args.output_dir))
    count = args.num_parts
    if count is None:
        if len(counts) != 1:
            found = ", ".join(map(str, counts)) or "none"
            log.error("configuration error: %s: %s; give --num_parts", args.output_dir,
                      f"parts of several splits (N = {found})" if counts else "no parts/part-K-of-N folders")
            return 2
        count = counts[0]
    try:
        merge_parts(args.output_dir, count)
    except (ConfigError, OSError) as exc:
        log.error("configuration error: %s", exc)
        return 2
    return 0
