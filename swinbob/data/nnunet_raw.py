"""nnU-Net v2 raw dataset folders, read as they are: cases from ``imagesTr/``, folds from ``splits_final.json``.

nnU-Net v2's ``dataset.json`` lists no cases: they are the files of ``imagesTr/`` named
``{case}_{XXXX}{file_ending}`` (``XXXX`` the channel index of ``channel_names``) with labels
``labelsTr/{case}{file_ending}``, or, when the dataset.json holds a ``"dataset"`` block, the files it
names. Cross-validation folds come from ``splits_final.json`` (a list of ``{"train": [...], "val":
[...]}``), found beside the dataset.json or given by path (``--splits``); without one, the folds are
the ones nnU-Net itself would generate (5-fold, shuffled with seed 12345 over the sorted case ids),
so that a model trained here and one trained with nnU-Net hold out the same cases.

Every problem of the folder (a missing or extra channel file, a missing label, a label without
images, a case count that disagrees with ``numTraining``) is collected into one
:class:`RawDatasetError` before anything is trained.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from swinbob.files import NIFTI_SUFFIXES, read_bounded_text

log = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"
NNUNET_SPLIT_SEED = 12345
"""nnU-Net v2's ``generate_crossval_split`` seed (``KFold(5, shuffle=True, random_state=12345)``)."""
NUM_FOLDS = 5
DEFAULT_FOLD = 0


class RawDatasetError(ValueError):
    """An nnU-Net raw folder that cannot be used; ``problems`` names every file at fault."""

    def __init__(self, problems: Sequence[str], source: str) -> None:
        self.problems, self.source = list(problems), source
        super().__init__(f"{source}: " + ("; ".join(self.problems) if len(self.problems) < 4 else
                                         f"{len(self.problems)} problems: " + "; ".join(self.problems)))


def is_raw_dataset(content: Mapping[str, Any]) -> bool:
    """Whether a dataset.json describes an nnU-Net v2 raw folder (no Decathlon ``training`` list)."""
    return "training" not in content and any(k in content for k in ("file_ending", "channel_names", "dataset"))


@dataclass(frozen=True)
class RawDataset:
    """The cases of an nnU-Net raw folder: ``entries[case]`` is a datalist entry with absolute paths."""

    root: Path
    dataset_json: Path
    entries: dict[str, dict[str, Any]]

    @property
    def case_ids(self) -> list[str]:
        """Case identifiers, sorted."""
        return sorted(self.entries)


def _file_ending(content: Mapping[str, Any], problems: list[str]) -> str:
    ending = content.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or ending not in NIFTI_SUFFIXES:
        problems.append(f"'file_ending' {ending!r}: only NIfTI ({', '.join(NIFTI_SUFFIXES)}) is read; convert the "
                        "images (e.g. with SimpleITK) and set \"file_ending\": \".nii.gz\"")
        return ".nii.gz"
    return ending


def _channel_count(content: Mapping[str, Any], problems: list[str]) -> int:
    channels = content.get("channel_names") or content.get("modality")
    if not isinstance(channels, dict) or not channels:
        problems.append("needs 'channel_names', e.g. {\"0\": \"CT\"}")
        return 1
    return len(channels)


def _entry(images: list[Path], label: Path | None) -> dict[str, Any]:
    """A datalist entry: one path for single-channel cases (as Decathlon lists), a list otherwise."""
    entry: dict[str, Any] = {"image": str(images[0]) if len(images) == 1 else [str(p) for p in images]}
    if label is not None:
        entry["label"] = str(label)
    return entry


def _listed(folder: Path, ending: str) -> tuple[list[Path], list[str]]:
    """Files of ``folder`` ending in ``ending`` (hidden files left out), and the other NIfTI names."""
    names = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    matching = [p for p in names if p.name.endswith(ending) and p.is_file()]
    others = [p.name for p in names if p.name.endswith(NIFTI_SUFFIXES) and not p.name.endswith(ending)]
    return matching, others


def discover_images(folder: Path, ending: str, num_channels: int,
                    problems: list[str]) -> tuple[dict[str, list[Path]], set[str]]:
    """``{case: [channel files in index order]}`` of an ``imagesTr``/``imagesTs`` folder, and every
    case id seen (also incomplete ones); files not named ``{case}_{XXXX}{ending}``, indices outside
    ``channel_names`` and missing channels are appended to ``problems`` (each naming its file)."""
    files, others = _listed(folder, ending)
    if not files and others:
        problems.append(f"{folder}: no file ends in {ending!r} (the 'file_ending'), but {len(others)} other NIfTI file(s) "
                        f"do, e.g. {others[0]}")
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    found: dict[str, dict[int, Path]] = {}
    for path in files:
        match = pattern.match(path.name)
        if not match:
            problems.append(f"{path}: not named {{case}}_XXXX{ending} (XXXX: the channel index, 0000 for the first)")
            continue
        index = int(match.group(2))
        if index >= num_channels:
            problems.append(f"{path}: channel {match.group(2)}, but 'channel_names' declares {num_channels} "
                            f"(0000..{num_channels - 1:04d})")
            continue
        found.setdefault(match.group(1), {})[index] = path
    cases: dict[str, list[Path]] = {}
    for case, channels in sorted(found.items()):
        missing = [i for i in range(num_channels) if i not in channels]
        if missing:
            problems.extend(f"{folder / f'{case}_{i:04d}{ending}'}: missing (channel {i:04d} of case {case!r})" for i in missing)
            continue
        cases[case] = [channels[i] for i in range(num_channels)]
    return cases, set(found)


def _from_dataset_block(root: Path, block: Any, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Entries of nnU-Net v2's optional ``"dataset": {case: {"images": [...], "label": ...}}`` block."""
    if not isinstance(block, dict) or not block:
        problems.append("'dataset' must map case ids to {\"images\": [...], \"label\": ...}")
        return {}
    entries = {}
    for case, files in sorted(block.items()):
        images = files.get("images") if isinstance(files, dict) else None
        label = files.get("label") if isinstance(files, dict) else None
        if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images) or not isinstance(label, str):
            problems.append(f"'dataset': case {case!r} needs \"images\": [paths] and \"label\": path")
            continue
        paths = [root / p for p in images]
        missing = [str(p) for p in [*paths, root / label] if not p.is_file()]
        problems.extend(f"{p}: missing (named by 'dataset' for case {case!r})" for p in missing)
        if not missing:
            entries[case] = _entry(paths, root / label)
    return entries


def read_raw_dataset(dataset_json: Path, content: Mapping[str, Any]) -> RawDataset:
    """The training cases of the nnU-Net raw folder holding ``dataset_json``.

    Raises :class:`RawDatasetError` listing every missing/extra channel or label file.
    """
    root = dataset_json.parent
    problems: list[str] = []
    ending = _file_ending(content, problems)
    num_channels = _channel_count(content, problems)
    if "dataset" in content:
        entries = _from_dataset_block(root, content["dataset"], problems)
    else:
        images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                problems.append(f"{folder}: not found (an nnU-Net raw dataset keeps imagesTr/ and labelsTr/ beside dataset.json)")
        if problems:
            raise RawDatasetError(problems, str(dataset_json))
        images, seen = discover_images(images_dir, ending, num_channels, problems)
        labels = {p.name[: -len(ending)]: p for p in _listed(labels_dir, ending)[0]}
        problems.extend(f"{labels[case]}: a label without images (no {case}_0000{ending} in {images_dir})"
                        for case in sorted(set(labels) - seen))
        problems.extend(f"{labels_dir / f'{case}{ending}'}: missing (label of case {case!r})" for case in sorted(set(images) - set(labels)))
        entries = {case: _entry(images[case], labels[case]) for case in sorted(set(images) & set(labels))}
    expected = content.get("numTraining")
    if isinstance(expected, int) and not isinstance(expected, bool) and not problems and expected != len(entries):
        problems.append(f"'numTraining' is {expected} but {len(entries)} case(s) were found")
    if not entries and not problems:
        problems.append(f"no training case in {root / 'imagesTr'} (files {{case}}_0000{ending})")
    if problems:
        raise RawDatasetError(problems, str(dataset_json))
    return RawDataset(root, dataset_json, entries)


def crossval_splits(case_ids: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = NNUNET_SPLIT_SEED) -> list[dict[str, list[str]]]:
    """nnU-Net v2's default folds: scikit-learn's ``KFold(num_folds, shuffle=True, random_state=seed)``
    over the sorted case ids (reimplemented: the first ``n % k`` folds hold one case more)."""
    keys = sorted(case_ids)
    if len(keys) < 2:
        raise ValueError(f"cross-validation needs at least 2 cases, got {len(keys)}")
    folds = min(num_folds, len(keys))
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, len(keys) // folds)
    sizes[: len(keys) % folds] += 1
    splits, start = [], 0
    for size in sizes:
        held = np.zeros(len(keys), dtype=bool)
        held[order[start:start + size]] = True
        start += size
        splits.append({"train": [k for k, h in zip(keys, held) if not h], "val": [k for k, h in zip(keys, held) if h]})
    return splits


def read_splits(path: Path) -> list[dict[str, list[str]]]:
    """A ``splits_final.json``: a list of ``{"train": [case ids], "val": [case ids]}`` (ValueError naming it)."""
    try:
        content = json.loads(read_bounded_text(path, "splits file"))
    except (OSError, ValueError) as exc:  # unreadable, too large (--max_table_mb), not UTF-8, not JSON
        raise ValueError(f"{path}: cannot read the splits file ({exc})") from exc
    if not isinstance(content, list) or not content:
        raise ValueError(f"{path}: a splits file holds a non-empty list of {{\"train\": [...], \"val\": [...]}} folds")
    for index, fold in enumerate(content):
        if not (isinstance(fold, dict) and all(isinstance(fold.get(k), list) and all(isinstance(c, str) for c in fold[k])
                                               for k in ("train", "val"))):
            raise ValueError(f"{path}: fold {index} is not {{\"train\": [case ids], \"val\": [case ids]}}")
    return content


@dataclass(frozen=True)
class FoldSplit:
    """The folds a run uses, where they came from, and the chosen fold."""

    splits: list[dict[str, list[str]]]
    fold: int
    source: str
    generated: bool


def fold_split(dataset: RawDataset, fold: int | None, splits_path: str | Path | None = None) -> FoldSplit:
    """The folds of ``dataset``: ``splits_path``, else ``splits_final.json`` beside the dataset.json,
    else nnU-Net's default 5 folds; ``fold`` None means fold 0. Raises ValueError for a fold the
    splits do not have or case ids without images."""
    fold = DEFAULT_FOLD if fold is None else fold
    path = Path(splits_path) if splits_path else dataset.root / SPLITS_FILE
    if splits_path and not path.is_file():
        raise ValueError(f"--splits: {path} not found")
    if path.is_file():
        splits, source, generated = read_splits(path), str(path), False
        unknown = sorted({c for f in splits for k in ("train", "val") for c in f[k]} - set(dataset.entries))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ValueError(f"{path}: {len(unknown)} case id(s) without images in {dataset.root / 'imagesTr'}: {shown}")
    else:
        splits = crossval_splits(dataset.case_ids)
        source, generated = f"{len(splits)}-fold split of {len(dataset.entries)} cases (nnU-Net's seed {NNUNET_SPLIT_SEED})", True
    if not 0 <= fold < len(splits):
        raise ValueError(f"--fold {fold}: {source} has {len(splits)} fold(s), 0..{len(splits) - 1}")
    return FoldSplit(splits, fold, source, generated)


def split_entries(dataset: RawDataset, split: FoldSplit, which: str) -> list[dict[str, Any]]:
    """Entries of the ``"training"`` (fold's train) or ``"validation"`` (fold's val) part."""
    key = "val" if which == "validation" else "train"
    return [dataset.entries[c] for c in sorted(split.splits[split.fold][key])]


def imagests_entries(root: Path, content: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Cases of ``imagesTs/`` (labels from ``labelsTs/`` when present) for ``--split test``."""
    problems: list[str] = []
    ending, num_channels = _file_ending(content, problems), _channel_count(content, problems)
    folder = root / "imagesTs"
    if not folder.is_dir():
        raise RawDatasetError([f"{folder}: not found"], str(root / "dataset.json"))
    images, _ = discover_images(folder, ending, num_channels, problems)
    if problems:
        raise RawDatasetError(problems, str(root / "dataset.json"))
    labels = root / "labelsTs"
    return [_entry(images[c], labels / f"{c}{ending}" if (labels / f"{c}{ending}").is_file() else None) for c in images]


def raw_entries(dataset_json: Path, content: Mapping[str, Any], which: str, fold: int | None,
                splits_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Datalist entries of an nnU-Net raw folder: ``which`` is ``training``/``validation`` (a fold's
    parts) or ``test`` (``imagesTs``)."""
    if which == "test":
        return imagests_entries(dataset_json.parent, content)
    if which not in ("training", "validation"):
        raise ValueError(f"split {which!r}: an nnU-Net raw dataset has training, validation (a fold's) and test (imagesTs)")
    dataset = read_raw_dataset(dataset_json, content)
    return split_entries(dataset, fold_split(dataset, fold, splits_path), which)


def splits_text(split: FoldSplit) -> str:
    """The folds as nnU-Net writes ``splits_final.json``."""
    return json.dumps(split.splits, indent=4) + "\n"


def raw_fold_split(dataset_json: Path, fold: int | None, splits_path: str | Path | None = None) -> FoldSplit | None:
    """The folds a training run on ``dataset_json`` uses, or None for a Decathlon datalist."""
    content = json.loads(dataset_json.read_text(encoding="utf-8"))
    if not isinstance(content, dict) or not is_raw_dataset(content):
        return None
    return fold_split(read_raw_dataset(dataset_json, content), fold, splits_path)
