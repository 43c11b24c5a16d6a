"""SOLF outputs: cleaned label maps, the Decathlon dataset.json and the report tables.

Cleaning policy. A rejected organ's voxels become :data:`~swinbob.labels.IGNORE_LABEL` (255),
not background: the organ is there, only its outline is untrustworthy, and calling it background
would teach the model that the organ is absent. Fragments removed from a cleaned organ become
255 as well: a stray island of "liver" is most likely another tissue mislabelled, but which
one is unknown, so the honest training signal is none (background would be a guess).

A left/right pair inverted as a whole (decision reason ``swapped``) has its two labels exchanged:
the one error that can be repaired exactly. What ignoring cannot undo: an organ segmented too
small, or with missing slices, left its missing part labelled background, and 255 on the organ's
own voxels keeps that wrong background (benchmarks/RESULTS.md measures it); leaving such scans out
(``min_rejected_to_exclude`` 1, ``max_rejected_fraction`` 0) removes it.

Every file is written atomically (:func:`swinbob.files.atomic_write`), inputs are only read, and
re-running is idempotent: outputs are deterministic functions of the inputs and settings (gzip
without time stamps, sorted tables, no dates in the summary), and cleaned labels whose inputs and
decisions are unchanged (a manifest of keys) are not even rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from swinbob.files import NiftiError, atomic_write_text, disk_full, write_nifti
from swinbob.labels import IGNORE_LABEL, TOTALVIBE_LABELS, side_pairs
from swinbob.solf.decide import CLEANED, KEPT, REJECTED, Decisions
from swinbob.solf.features import CONNECTIVITY, MAX_LABEL, MAX_ORGAN_ID, LabelError, validate_labels
from swinbob.solf.labelsets import LABEL_SLOTS, name_of
from swinbob.solf.rules import RuleSet
from swinbob.solf.store import FeatureTable, csv_text, write_csv_columns
from swinbob.solf.structures import label_header, read_label_source, structure_ids

DECISION_COLUMNS = ("case_id", "label", "name", "decision", "reasons", "paper_reasons", "voxel_count", "n_components",
                    "largest_share", "z_log_volume", "z_log_surface", "z_sphericity", "z_eccentricity",
                    "z_position", "scan_excluded")


@dataclass(frozen=True)
class CleanTask:
    """What a worker needs to write one cleaned label map (plain, picklable values)."""

    case_id: str
    label_path: str
    output_path: str
    rejected: tuple[int, ...]
    keep_components: dict[int, int] = field(default_factory=dict)
    max_label: int = MAX_LABEL
    structures: tuple[tuple[str, int], ...] = ()
    """``(name, id)`` of the label set, for inputs that are folders of per-structure masks."""
    drop_pieces: dict[int, tuple[int, ...]] = field(default_factory=dict)
    swaps: tuple[tuple[int, int], ...] = ()
    """Left/right pairs whose labels are exchanged."""

    def key(self, fingerprint: str) -> str:
        """Manifest key: changes when the input or the decisions for this scan change."""
        payload = [fingerprint, sorted(self.rejected), sorted(self.keep_components.items()), IGNORE_LABEL]
        if self.drop_pieces:  # left out when empty: keys of earlier runs stay valid
            payload.append(sorted((k, list(v)) for k, v in self.drop_pieces.items()))
        if self.swaps:
            payload.append(sorted(list(s) for s in self.swaps))
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]


def output_dtype(stored: np.dtype) -> np.dtype:
    """The input's integer type if it can hold the ignore value, else uint8 (e.g. float labels)."""
    stored = np.dtype(stored)
    if stored.kind in "iu" and np.iinfo(stored).max >= IGNORE_LABEL:
        return stored
    return np.dtype(np.uint8)


def clean_label(label: np.ndarray, rejected: tuple[int, ...] | list[int], keep_components: dict[int, int],
                drop_pieces: dict[int, tuple[int, ...]] | None = None,
                swaps: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    """Cleaned copy of a validated uint8 label map.

    Rejected organs become the ignore value; each pair of ``swaps`` exchanges its labels; for
    each organ in ``keep_components`` only its N largest 26-connected components stay (ties
    broken by scan order; N = 0: no limit), and the components numbered in ``drop_pieces`` (scan
    order inside the organ's bounding box, as pass 1 numbers them) go too; what goes becomes ignore.
    """
    lut = np.arange(256, dtype=np.uint8)
    for left, right in swaps:
        lut[left], lut[right] = right, left
    lut[list(rejected)] = IGNORE_LABEL
    out = lut[label]
    drop_pieces = drop_pieces or {}
    if not keep_components and not drop_pieces:
        return out
    boxes = ndimage.find_objects(label, max_label=MAX_ORGAN_ID)
    for organ in sorted(set(keep_components) | set(drop_pieces)):
        box = boxes[organ - 1]
        if box is None:
            continue
        components, n = ndimage.label(label[box] == organ, structure=CONNECTIVITY)
        drop = np.zeros(n + 1, dtype=bool)
        n_keep = keep_components.get(organ, 0)
        if n_keep > 0:
            sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
            drop[np.argsort(-sizes, kind="stable")[n_keep:] + 1] = True
        pieces = [p for p in drop_pieces.get(organ, ()) if 1 <= p <= n]
        drop[pieces] = True
        out[box][drop[components]] = IGNORE_LABEL
    return out


def clean_case(task: CleanTask) -> tuple[str, str | None]:
    """Write one cleaned label map with the input's affine and header; ``(case_id, error or None)``."""
    try:
        source = read_label_source(task.label_path, task.structures)
        header = label_header(source, task.label_path).copy()
        cleaned = clean_label(validate_labels(source.data, task.max_label), task.rejected, task.keep_components,
                              task.drop_pieces, task.swaps)
        affine = source.affine
        dtype = output_dtype(header.get_data_dtype())
        header.set_slope_inter(1.0, 0.0)
        write_nifti(task.output_path, cleaned.astype(dtype), affine, header=header)
    except (NiftiError, LabelError, OSError) as exc:
        if disk_full(exc):
            raise  # not this scan's problem: the run stops with a message (every later write would fail)
        return task.case_id, str(exc)
    return task.case_id, None


def clean_tasks(table: FeatureTable, decisions: Decisions, labels_dir: Path, included: list[str],
                label_paths: dict[str, Path], suffix: str = ".nii.gz") -> list[CleanTask]:
    """One :class:`CleanTask` per included scan, from the row decisions."""
    cols = table.columns
    index = {case: i for i, case in enumerate(table.case_ids)}
    wanted = {index[c] for c in included}
    rejected: dict[int, list[int]] = {i: [] for i in wanted}
    swapped: dict[int, set[int]] = {i: set() for i in wanted}
    keep: dict[int, dict[int, int]] = {i: {} for i in wanted}
    drops: dict[int, dict[int, tuple[int, ...]]] = {i: {} for i in wanted}
    pieces = decisions.pieces
    dropped: dict[int, list[int]] = {}
    if pieces is not None:
        for index in np.flatnonzero(pieces.drop):
            dropped.setdefault(int(pieces.row[index]), []).append(int(table.pieces["piece"][index]))
    for row in np.flatnonzero(decisions.decision != KEPT):
        case = int(cols["case_index"][row])
        if case not in wanted:
            continue
        label = int(cols["label"][row])
        if decisions.decision[row] == REJECTED:
            rejected[case].append(label)
            continue
        if decisions.swapped is not None and decisions.swapped[row]:
            swapped[case].add(label)
        if decisions.keep_components[row] > 0:
            keep[case][label] = int(decisions.keep_components[row])
        if int(row) in dropped:
            drops[case][label] = tuple(sorted(dropped[int(row)]))
    pairs = side_pairs(decisions.rules.labels)
    return [CleanTask(table.case_ids[i], str(label_paths[table.case_ids[i]]),
                      str(labels_dir / f"{table.case_ids[i]}{suffix}"), tuple(rejected[i]), keep[i],
                      max(decisions.rules.labels), structure_ids(decisions.rules.labels), drops[i],
                      tuple(pair for pair in pairs if set(pair) <= swapped[i]))
            for i in sorted(wanted)]


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split: the cases with the lowest ``hash(seed, case)`` validate.

    Ranking by a per-case hash (rather than shuffling a list) keeps a case on the same side when
    other cases are added or excluded, so re-filtering with other thresholds does not leak
    validation cases into training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ranked = sorted(case_ids, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    n_val = round(val_fraction * len(ranked))
    if val_fraction > 0 and len(ranked) >= 2:
        n_val = min(max(n_val, 1), len(ranked) - 1)
    validation = set(ranked[:n_val])
    return sorted(c for c in case_ids if c not in validation), sorted(validation)


def _relative(path: str | Path, start: Path) -> str:
    """``path`` relative to ``start`` with ``/`` separators (symbolic links are not followed)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(start))).as_posix()


def data_root(json_path: Path, files: list[Path]) -> Path:
    """The deepest common folder of the datalist and ``files`` (absolute, links not followed)."""
    return Path(os.path.commonpath([os.path.abspath(json_path.parent), *(os.path.abspath(f) for f in files)]))


def dataset_json(json_path: Path, train: list[str], validation: list[str], label_files: dict[str, Path],
                 image_files: dict[str, tuple[str, ...]], channel_names: tuple[str, ...],
                 labels: dict[int, str] = TOTALVIBE_LABELS) -> dict:
    """Decathlon datalist with paths relative to one data root (train with ``--data_dir`` = that root).

    The root is the deepest folder holding the datalist and every label and image file, so images
    that live outside the output folder never need ``..`` (which training refuses as escaping its
    data dir). ``data_root`` records it relative to the json's folder.
    """
    files = [Path(p) for case in train + validation for p in (label_files[case], *image_files.get(case, ()))]
    root = data_root(json_path, files)

    def entry(case: str) -> dict:
        item: dict = {}
        if image_files.get(case):
            item["image"] = [_relative(p, root) for p in image_files[case]]
        item["label"] = _relative(label_files[case], root)
        return item

    content: dict = {
        "name": "UKBOB", "description": ("TotalVibeSegmentator" if labels == TOTALVIBE_LABELS else "Automatic")
        + " labels cleaned by SOLF (Swin-BOB)",
        "reference": "UKBOB, ICCV 2025", "tensorImageSize": "4D" if channel_names else "3D",
    }
    if channel_names:
        content["modality"] = {str(i): name for i, name in enumerate(channel_names)}
    content.update({
        "data_root": _relative(root, json_path.parent),
        "labels": {str(i): name for i, name in labels.items()},
        "ignore_label": IGNORE_LABEL,
        "numTraining": len(train), "numValidation": len(validation),
        "training": [entry(c) for c in train], "validation": [entry(c) for c in validation],
    })
    return content


def write_json(path: Path, content: object) -> None:
    """Pretty, key-order-preserving JSON written atomically."""
    atomic_write_text(path, json.dumps(content, indent=2) + "\n")


def write_decisions_csv(path: Path, table: FeatureTable, decisions: Decisions) -> None:
    """The per-(scan, organ) decision table with reasons and robust z-scores (blank where untested)."""
    cols, z = table.columns, decisions.zscores
    case, label = cols["case_index"], cols["label"]
    names = np.array([name_of(decisions.rules.labels, i) for i in range(LABEL_SLOTS)], dtype=object)
    values = [np.asarray(table.case_ids, dtype=object)[case].tolist(), label, names[label].tolist(),
              decisions.decision.tolist(), decisions.reasons, decisions.paper_reasons, cols["voxel_count"],
              cols["n_components"], cols["largest_share"].round(4),
              *(np.ma.masked_invalid(z[n].round(3)) for n in ("log_volume", "log_surface", "sphericity", "eccentricity", "position")),
              decisions.scan_excluded[case].astype(np.int64)]
    write_csv_columns(path, dict(zip(DECISION_COLUMNS, values)))


def write_failures(report_dir: Path, failures: list[dict]) -> None:
    """``failures.csv`` and ``failures.json``: one entry per failed scan (case, stage, reason)."""
    failures = sorted(failures, key=lambda f: (f["case_id"], f["stage"]))
    rows = [[f["case_id"], f["stage"], f["reason"]] for f in failures]
    atomic_write_text(report_dir / "failures.csv", csv_text(["case_id", "stage", "reason"], rows))
    write_json(report_dir / "failures.json", failures)


def per_organ_summary(table: FeatureTable, decisions: Decisions) -> dict[str, dict]:
    """Per organ: how often present, kept, cleaned, rejected, retention and reason counts."""
    labels = table.columns["label"]
    out = {}
    for label in np.unique(labels).tolist():
        rows = np.flatnonzero(labels == label)
        verdicts = Counter(decisions.decision[rows].tolist())
        reasons = Counter(r for row in rows[decisions.decision[rows] != KEPT]
                          for r in f"{decisions.reasons[row]};{decisions.paper_reasons[row]}".split(";") if r)
        out[name_of(decisions.rules.labels, label)] = {
            "label": label, "present": int(rows.size), "kept": verdicts[KEPT], "cleaned": verdicts[CLEANED],
            "rejected": verdicts[REJECTED], "retention": round((rows.size - verdicts[REJECTED]) / rows.size, 4),
            "population_checked": bool(np.isfinite(decisions.population["log_volume"].median[label])),
            "reasons": dict(sorted(reasons.items())),
        }
    return out


def summary(table: FeatureTable, decisions: Decisions, rules: RuleSet, split: tuple[list[str], list[str]],
            failures: list[dict]) -> dict:
    """Run summary: scan and organ counts, per-organ retention and the settings used."""
    verdicts = Counter(decisions.decision.tolist())
    return {
        "scans": {"total": len(table.scans), "measured": len(table.case_ids),
                  "failed": len({f["case_id"] for f in failures}),
                  "excluded": int(decisions.scan_excluded.sum()),
                  "training": len(split[0]), "validation": len(split[1])},
        "organs": {"present": int(decisions.decision.size), "kept": verdicts[KEPT],
                   "cleaned": verdicts[CLEANED], "rejected": verdicts[REJECTED]},
        "per_organ": per_organ_summary(table, decisions),
        "settings": rules.to_json()["settings"],
        "label_set": "totalvibe" if rules.labels == TOTALVIBE_LABELS else f"{len(rules.labels) - 1} labels (--labels)",
        "ignore_label": IGNORE_LABEL,
    }


def read_manifest(path: Path) -> dict[str, str]:
    """Keys of the cleaned labels written by earlier runs (empty if none or unreadable)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in content.items()}
    except (OSError, ValueError, AttributeError):
        return {}

