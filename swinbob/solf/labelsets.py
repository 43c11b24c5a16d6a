"""Label sets SOLF can clean: presets, label tables from files, and what names tell about organs.

SOLF needs only an ``{id: name}`` table. It comes from a preset (``totalvibe``: the 72
TotalVibeSegmentator IDs of UKBOB, the default; ``totalsegmentator``: TotalSegmentator v2's 117 CT
classes) or from a file given with ``--labels``:

* a ``dataset.json`` (nnU-Net v2 ``"labels": {"liver": 1, ...}`` or Decathlon ``"labels": {"1": "liver"}``);
* a JSON file holding such a ``labels`` mapping directly;
* a CSV file with two columns ``id,name`` (a header row is optional).

Background (ID 0) is implied. IDs must be integers 1..254 (255 is SOLF's ignore value); nnU-Net
region entries (lists of IDs) are skipped. Everything organ-specific beyond the names is learned
from the cohort when the label set is not TotalVibeSegmentator (see :mod:`swinbob.solf.rules`),
and left/right partners are found from the names (:func:`swinbob.labels.side_pairs`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from swinbob.data.dataset_task import MAX_NAME_CHARS, DatasetJsonError, parse_channels, parse_labels
from swinbob.files import read_bounded_text
from swinbob.labels import IGNORE_LABEL, TOTALSEGMENTATOR_LABELS, TOTALVIBE_LABELS

PRESETS: dict[str, dict[int, str]] = {"totalvibe": TOTALVIBE_LABELS, "totalsegmentator": TOTALSEGMENTATOR_LABELS}
LABEL_SLOTS = 256
"""Size of per-label lookup arrays: every uint8 value (labels are stored as uint8 by pass 1)."""


class LabelSetError(ValueError):
    """A label table that cannot be used (a configuration error: the run stops)."""


def _checked(table: dict[int, str], where: str) -> dict[int, str]:
    """``table`` with background added, after checking IDs and names."""
    out = {0: "background"}
    seen: dict[str, int] = {}
    for label, name in sorted(table.items()):
        if label == 0:
            continue
        if not 1 <= label < IGNORE_LABEL:
            raise LabelSetError(f"{where}: label ID {label} outside 1..{IGNORE_LABEL - 1}")
        if not isinstance(name, str):
            raise LabelSetError(f"{where}: label {label} has the name {_shown(name)}; names are text")
        if not name or name != name.strip():
            raise LabelSetError(f"{where}: label {label} has an empty or padded name {_shown(name)}")
        if not name.isprintable():  # names become file names and report cells
            raise LabelSetError(f"{where}: the name of label {label} holds non-printable characters {_shown(name)}")
        if len(name) > MAX_NAME_CHARS:
            raise LabelSetError(f"{where}: the name of label {label} has {len(name)} characters (at most {MAX_NAME_CHARS})")
        if name in seen:
            raise LabelSetError(f"{where}: name {name!r} used by IDs {seen[name]} and {label}")
        seen[name] = label
        out[label] = name
    if len(out) == 1:
        raise LabelSetError(f"{where}: no labels besides background")
    return out


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise LabelSetError(f"{where}: label ID {_shown(value)} is not a non-negative integer")
    if int(value) >= LABEL_SLOTS:
        raise LabelSetError(f"{where}: label ID {_shown(value)} outside 1..{IGNORE_LABEL - 1}")
    return int(value)


def labels_from_mapping(mapping: dict, where: str) -> dict[int, str]:
    """``{id: name}`` from a ``labels`` block in either direction (nnU-Net v2 or Decathlon), read by
    the same parser as ``--task auto`` (:func:`swinbob.data.dataset_task.parse_labels`); background is
    added when the block leaves it out."""
    if not isinstance(mapping, dict) or not mapping:
        raise LabelSetError(f"{where}: expected a non-empty 'labels' mapping")
    decathlon = all(re.fullmatch(r"\d+", str(k)) for k in mapping)
    if not decathlon:  # nnU-Net regions (lists of IDs) are skipped: SOLF cleans the organs themselves
        mapping = {k: v for k, v in mapping.items() if not isinstance(v, (list, tuple))}
        if not mapping:
            raise LabelSetError(f"{where}: only nnU-Net regions (lists of IDs), no labels")
    if decathlon and "0" not in mapping:
        mapping = {"0": "background", **mapping}
    elif not decathlon and 0 not in mapping.values() and "background" not in mapping:
        mapping = {"background": 0, **mapping}
    try:
        table = parse_labels({"labels": mapping}, where)["label_map"]
    except DatasetJsonError as exc:
        raise LabelSetError(str(exc)) from exc
    return _checked(table, where)


def _labels_from_csv(text: str, where: str) -> dict[int, str]:
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    except csv.Error as exc:  # a field over the csv module's limit, a NUL byte ...
        raise LabelSetError(f"{where}: not a CSV label table ({exc})") from exc
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]  # header
    table: dict[int, str] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise LabelSetError(f"{where}: row {number} needs two columns id,name, got {row}")
        label = _as_int(row[0].strip(), where)
        if label in table:
            raise LabelSetError(f"{where}: label ID {label} appears twice")
        table[label] = row[1].strip()
    return _checked(table, where)


def load_label_set(spec: str | Path | None) -> dict[int, str]:
    """The ``{id: name}`` table of a preset name or a file (see the module docstring)."""
    if spec is None:
        return dict(TOTALVIBE_LABELS)
    if str(spec) in PRESETS:
        return dict(PRESETS[str(spec)])
    path = Path(spec)
    if not path.is_file():
        raise LabelSetError(f"label set {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    try:
        text = read_bounded_text(path, "label table")
    except (OSError, ValueError) as exc:  # unreadable, too large, not UTF-8
        raise LabelSetError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    if path.suffix.lower() == ".csv":
        return _labels_from_csv(text, str(path))
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelSetError(f"{path}: invalid JSON ({exc})") from exc
    block = content.get("labels", content) if isinstance(content, dict) else content
    return labels_from_mapping(block, str(path))


def label_set_channels(spec: str | Path | None) -> tuple[str, ...] | None:
    """The image channels a ``--labels`` dataset.json names (``channel_names`` or ``modality``), or
    None for presets, CSV files and JSON files that name none."""
    if spec is None or str(spec) in PRESETS or Path(spec).suffix.lower() == ".csv":
        return None
    try:
        content = json.loads(Path(spec).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # load_label_set reports an unreadable file
    if not isinstance(content, dict) or not ({"channel_names", "modality"} & set(content)):
        return None
    try:
        return parse_channels(content, str(spec))
    except DatasetJsonError as exc:
        raise LabelSetError(str(exc)) from exc


def is_totalvibe(labels: dict[int, str]) -> bool:
    """Whether ``labels`` is TotalVibeSegmentator's table (whose organ rules SOLF has built in)."""
    return labels == TOTALVIBE_LABELS


def name_of(labels: dict[int, str], label: int) -> str:
    """Name of ``label`` (its number as text if the table does not name it)."""
    return labels.get(label, str(label))


def remap_by_name(label: np.ndarray, source: dict[int, str], target: dict[int, str]) -> np.ndarray:
    """``label`` (IDs of ``source``) in the IDs of ``target``; organs ``target`` does not name become 0.

    For example a TotalVibeSegmentator map in TotalSegmentator IDs (the synthetic CT cohort of
    the tests): the names the two tables share are kept, the rest is background.
    """
    ids = {name: i for i, name in target.items()}
    lut = np.zeros(LABEL_SLOTS, dtype=np.uint8)
    lut[IGNORE_LABEL] = IGNORE_LABEL
    for i, name in source.items():
        lut[i] = ids.get(name, 0)
    return lut[label]


def finite_values_by_label(values: np.ndarray, labels: np.ndarray, min_count: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(label, finite values)`` for every label with at least ``min_count`` finite values.

    Rows are sorted by label once and split, rather than masked once per label, so that a
    50,000-scan table costs one sort instead of one pass per label (population statistics of
    SOLF's own rule and the paper's percentiles both group this way).
    """
    order = np.argsort(labels, kind="stable")
    present, starts = np.unique(labels[order], return_index=True)
    for label, group in zip(present.tolist(), np.split(values[order], starts[1:])):
        finite = group[np.isfinite(group)]
        if finite.size >= min_count:
            yield label, finite
