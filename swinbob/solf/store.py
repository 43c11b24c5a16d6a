"""Pass-1 storage: append-only shard logs (resumable), their merge, and the features tables.

Each shard appends one JSON line per measured scan to ``features/shard-KKKKK-of-NNNNN.jsonl``
and flushes it, so a job killed at any moment loses at most the scan in progress: a truncated
last line is ignored when reading and cut off before appending again. Records carry the input
fingerprint; a scan counts as done when some log holds a record with its current fingerprint,
whichever shard layout wrote it. The merge picks those records for the current cases and writes
the features and scans tables sorted by case id, so sharded runs and one run give equal bytes.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swinbob.files import atomic_write, atomic_write_text
from swinbob.labels import TOTALVIBE_LABELS
from swinbob.solf.labelsets import name_of
from swinbob.solf.features import SHAPE_COLUMNS

log = logging.getLogger(__name__)

SCAN_COLUMNS = ("case_id", "status", "reason", "n_organs", "shape", "spacing", "orientation", "notes")


def shard_log_path(features_dir: Path, shard_id: int, num_shards: int) -> Path:
    """The log file one shard appends to."""
    return features_dir / f"shard-{shard_id:05d}-of-{num_shards:05d}.jsonl"


def shard_cases(case_ids: list[str], num_shards: int, shard_id: int) -> list[str]:
    """The cases of one shard: every ``num_shards``-th of the sorted list (balanced, stable)."""
    return sorted(case_ids)[shard_id::num_shards]


def _read_log(path: Path) -> list[dict]:
    """Complete records of one log; a truncated or corrupt line is skipped with a warning."""
    records = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("%s line %d is incomplete (interrupted run); that scan will be measured again", path, number)
                continue
            if isinstance(record, dict) and "case_id" in record and "fingerprint" in record:
                records.append(_compact(record))
    return records


MATRIX = "_matrix"
"""Key of a compacted record's features: (names, float64 array of shape (features, organs))."""


def _compact(record: dict) -> dict:
    """``record`` with its organ features as one float64 matrix: a 50,000-scan cohort holds ~120 M
    feature values, ~4 GB as Python floats in lists but 1 GB as arrays."""
    organs = record.get("organs")
    if isinstance(organs, dict) and "label" in organs:
        try:
            names = tuple(k for k in organs if k != "label")
            matrix = np.array([organs[k] for k in names], dtype=np.float64).reshape(len(names), len(organs["label"]))
            record["organs"] = {"label": np.asarray(organs["label"], np.int64), MATRIX: (names, matrix)}
        except (TypeError, ValueError):
            pass  # malformed: left as read, build_table reports it
    return record


def _feature_names(organs: dict) -> list[str]:
    """Feature names of a record's organs (compacted or as measured)."""
    return list(organs[MATRIX][0]) if MATRIX in organs else [k for k in organs if k != "label"]


def _feature_matrix(organs: dict, names: list[str]) -> np.ndarray:
    """(len(names), organs) float64 features of one record; NaN for names it lacks."""
    count = len(organs["label"])
    if MATRIX in organs:
        have, matrix = organs[MATRIX]
        if list(have) == names:
            return matrix
        row = {name: i for i, name in enumerate(have)}
        return np.stack([matrix[row[n]] if n in row else np.full(count, np.nan) for n in names]).reshape(len(names), count)
    return np.array([organs.get(n, [np.nan] * count) for n in names], dtype=np.float64).reshape(len(names), count)


def read_records(features_dir: Path) -> dict[str, dict[str, dict]]:
    """All logged records as ``{case_id: {fingerprint: record}}`` (later lines win)."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(features_dir.glob("shard-*-of-*.jsonl")):
        for record in _read_log(path):
            out.setdefault(record["case_id"], {})[record["fingerprint"]] = record
    return out


class ShardLog:
    """Append-only writer of one shard's log (use as a context manager)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_partial_line()
        self._handle = open(path, "ab")

    def _cut_partial_line(self) -> None:
        """Drop a last line without newline (left by a killed job) so appends start cleanly."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict) -> None:
        """Write one record as one line and flush it to the OS."""
        self._handle.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._handle.flush()

    def __enter__(self) -> ShardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync(self._handle.fileno())
        self._handle.close()


@dataclass
class FeatureTable:
    """Pass-1 results of the current cases: organ features as columns plus per-scan records.

    ``case_ids`` are the scans measured successfully; ``columns`` holds ``case_index`` (into
    ``case_ids``), ``label`` and every feature as numpy arrays with one entry per (scan, organ);
    ``scans`` has one summary record per input scan (ok or failed) in case order.
    """

    case_ids: list[str]
    columns: dict[str, np.ndarray]
    scans: list[dict]
    feature_names: list[str]


def select_current(logged: dict[str, dict[str, dict]], fingerprints: dict[str, str]) -> tuple[list[dict], list[str]]:
    """Records matching the current fingerprint of each case, and the cases that have none."""
    records, missing = [], []
    for case_id, current in sorted(fingerprints.items()):
        record = logged.get(case_id, {}).get(current)
        if record is None:
            missing.append(case_id)
        else:
            records.append(record)
    return records, missing


def build_table(records: list[dict]) -> FeatureTable:
    """Columnar :class:`FeatureTable` from scan records (sorted by case id)."""
    records = sorted(records, key=lambda r: r["case_id"])
    ok = [r for r in records if r["status"] == "ok"]
    feature_names = list(SHAPE_COLUMNS)
    if ok:
        feature_names += [k for k in _feature_names(ok[0]["organs"]) if k not in SHAPE_COLUMNS]
    case_ids = [r["case_id"] for r in ok]
    columns: dict[str, np.ndarray] = {
        "case_index": np.concatenate([np.full(len(r["organs"]["label"]), i, np.int64) for i, r in enumerate(ok)] or [np.zeros(0, np.int64)]),
        "label": np.concatenate([np.asarray(r["organs"]["label"], np.int64) for r in ok] or [np.zeros(0, np.int64)]),
    }
    features = (np.concatenate([_feature_matrix(r["organs"], feature_names) for r in ok], axis=1) if ok
                else np.zeros((len(feature_names), 0)))
    columns.update(zip(feature_names, features))  # rows of one C-ordered block: contiguous views
    if any("body_volume_mm3" in r for r in ok):  # measured from --body_dir masks (see swinbob.solf.paper)
        body = np.array([r.get("body_volume_mm3", np.nan) for r in ok], dtype=np.float64)
        columns["body_volume_mm3"] = body[columns["case_index"]]
    scans = [{
        "case_id": r["case_id"], "status": r["status"], "reason": r.get("reason", ""),
        "n_organs": len(r["organs"]["label"]) if r["status"] == "ok" else 0,
        "shape": "x".join(str(n) for n in r.get("shape", [])),
        "spacing": "x".join(f"{s:g}" for s in r.get("spacing", [])),
        "orientation": r.get("orientation", ""),
        "notes": "; ".join(r.get("notes", [])),
    } for r in records]
    return FeatureTable(case_ids, columns, scans, feature_names)


def format_value(value: object) -> str:
    """Shortest exact text of a table value (integers without a decimal point)."""
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)
    return str(value)


def csv_text(header: list[str], rows: list[list]) -> str:
    """CSV document with ``\\n`` line ends (byte-stable across platforms)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([format_value(v) for v in row] for row in rows)
    return buffer.getvalue()


def write_csv_columns(path: Path, columns: dict[str, np.ndarray | list]) -> None:
    """A CSV table given as columns (equal lengths), written atomically.

    With pyarrow installed (``pip install swinbob[scale]``) Arrow's C++ writer formats the values
    (3.7 M rows x 30 columns in well under a minute); otherwise Python's ``csv`` module
    (:func:`csv_text`), fine for thousands of scans. Both write the shortest exact text of every
    number (integral floats without ``.0``) and quote a text cell only when it needs quotes.
    Masked entries of a ``numpy.ma`` column are written as empty cells.
    """
    if importlib.util.find_spec("pyarrow") is None:
        values = [np.ma.filled(v.astype(object), "").tolist() if isinstance(v, np.ma.MaskedArray)
                  else list(v.tolist() if isinstance(v, np.ndarray) else v) for v in columns.values()]
        atomic_write_text(path, csv_text(list(columns), [list(row) for row in zip(*values)]))
        return
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    def arrow(v: np.ndarray | list) -> pa.Array:
        if isinstance(v, np.ma.MaskedArray):
            return pa.array(v.data, mask=np.ma.getmaskarray(v))
        return pa.array(v)

    table = pa.table({name: arrow(v) for name, v in columns.items()})
    header = csv_text(list(columns), []).encode()  # Arrow would quote every header name
    for style in ("none", "needed"):  # "none" fails on a comma, quote or line break in a text cell
        try:
            with atomic_write(path) as tmp, open(tmp, "wb") as handle:
                handle.write(header)
                pa_csv.write_csv(table, handle, pa_csv.WriteOptions(include_header=False, quoting_style=style))
            return
        except pa.ArrowInvalid:
            if style == "needed":
                raise


def write_features_csv(table: FeatureTable, path: Path, labels: dict[int, str] = TOTALVIBE_LABELS) -> None:
    """The per-(scan, organ) features table, sorted by case then label, written atomically."""
    cols = table.columns
    case_ids = np.asarray(table.case_ids, dtype=object)
    names = np.array([name_of(labels, i) for i in range(256)], dtype=object)
    columns = {"case_id": case_ids[cols["case_index"]].tolist(), "label": cols["label"],
                      "name": names[cols["label"]].tolist(), **{n: cols[n] for n in table.feature_names}}
    write_csv_columns(path, columns)


def write_scans_csv(table: FeatureTable, path: Path) -> None:
    """One row per scan with its pass-1 status, grid and failure reason."""
    rows = [[scan[c] for c in SCAN_COLUMNS] for scan in table.scans]
    atomic_write_text(path, csv_text(list(SCAN_COLUMNS), rows))
