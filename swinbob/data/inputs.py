"""Input cases of inference: finding them (a folder or a datalist) and loading them, one error per case.

A folder of images is read in either naming scheme: ``<case>[-_]<channel>.nii.gz`` (channel
names of the task) or nnU-Net's ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... (channel
index k is the task's k-th channel).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Compose

from swinbob.data.transforms import case_name
from swinbob.files import load_nifti_header

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One input: its image file(s) (one per channel, or one multi-channel file) and optional label."""

    name: str
    image: tuple[str, ...]
    label: str | None = None


def _channel_tags(channel_names: Sequence[str], indices: bool = True) -> dict[str, str]:
    """File-name tags of each channel (lower case): the channel's name for multi-channel tasks and,
    with ``indices``, nnU-Net's index ``0000``, ``0001``, ... (folder inputs)."""
    tags = {f"{index:04d}": name for index, name in enumerate(channel_names)} if indices else {}
    if len(channel_names) > 1:
        tags.update({name.lower(): name for name in channel_names})
    return tags


def _tag_pattern(channel_names: Sequence[str], indices: bool = True) -> str:
    return "|".join(map(re.escape, _channel_tags(channel_names, indices))) or "(?!)"  # (?!): no tag at all


def _case_id(path: str, channel_names: Sequence[str], indices: bool = True) -> str:
    """The case of an image file: its name without NIfTI suffix and channel tag (``_fat``, ``_0000``)."""
    pattern = _tag_pattern(channel_names, indices)
    return re.sub(rf"[-_]({pattern})$", "", case_name({"image": path}), flags=re.IGNORECASE)


def folder_cases(input_dir: str | Path, channel_names: Sequence[str]) -> list[Case]:
    """Unlabelled cases in ``input_dir``: every NIfTI file, or for multi-channel tasks the files
    ``<case>[-_]<channel>.nii[.gz]`` (anywhere below) grouped by folder and case, in the task's
    channel order. nnU-Net's ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... name channel k by
    its index (the task's k-th channel); a single-channel case ``<case>_0000`` is named ``<case>``.

    Channels are grouped within one folder only, so that two subjects sharing a case name in
    different folders are never mixed into one input (their clashing names are refused later);
    two files for one channel of one case raise ``ValueError``.
    """
    listed = sorted(p for p in Path(input_dir).rglob("*") if not p.name.startswith("._"))  # macOS metadata
    files = [p for p in listed if p.name.endswith((".nii", ".nii.gz"))]  # links and FIFOs too: their cases fail, named
    for path in listed:
        if path.name.endswith((".hdr", ".img", ".hdr.gz", ".img.gz")):
            log.warning("%s: not read (Analyze/NIfTI pairs are not predicted; convert the pair to .nii.gz)", path)
    if len(channel_names) == 1:
        return [Case(_case_id(str(p), channel_names), (str(p),)) for p in files if p.parent == Path(input_dir)]
    tags = _channel_tags(channel_names)
    pattern = re.compile(rf"^(.+)[-_]({_tag_pattern(channel_names)})\.nii(\.gz)?$", re.IGNORECASE)
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for path in files:
        match = pattern.match(path.name)
        if match:
            name, channel = match.group(1), tags[match.group(2).lower()]
            found = groups.setdefault((name, str(path.parent)), {})
            if channel in found:
                raise ValueError(f"two {channel} files for case {name!r}: {found[channel]} and {path}")
            found[channel] = str(path)
    return [Case(name, tuple(found.get(c, f"<missing {c} file for {name}>") for c in channel_names))
            for (name, _), found in sorted(groups.items())]


def datalist_cases(entries: Sequence[dict[str, Any]], channel_names: Sequence[str]) -> list[Case]:
    """Cases of datalist entries (``load_datalist``): image file(s), label, name from the first image
    (without a channel name; an nnU-Net index stays: outputs keep the datalist's image names)."""
    cases = []
    for entry in entries:
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        cases.append(Case(_case_id(images[0], channel_names, indices=False), tuple(images), entry.get("label")))
    return cases


def root_cause(exc: BaseException) -> str:
    """``Type: message`` of the error that matters, unwrapping MONAI's 'applying transform' wrappers."""
    while exc.__cause__ is not None and "applying transform" in str(exc):
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class CaseDataset(torch.utils.data.Dataset):
    """Preprocessed cases; a case that cannot be loaded yields its error instead of raising."""

    def __init__(self, cases: Sequence[Case], preprocess: Compose) -> None:
        self.cases, self.preprocess = list(cases), preprocess

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        try:
            for path in case.image:
                load_nifti_header(path)
            image = case.image[0] if len(case.image) == 1 else list(case.image)
            return {"case": case, "image": self.preprocess({"image": image})["image"]}
        except Exception as exc:  # noqa: BLE001 - any failure is reported per case
            reason = root_cause(exc)
            if not any(path in reason for path in case.image):
                reason += f" ({', '.join(case.image)})"
            return {"case": case, "error": reason}


def _identity(batch: Any) -> Any:
    return batch


def iterate_cases(cases: Sequence[Case], preprocess: Compose, workers: int) -> Iterator[dict[str, Any]]:
    """Preprocessed cases in order, loaded ahead by ``workers`` processes (0: in this process)."""
    loader = torch.utils.data.DataLoader(
        CaseDataset(cases, preprocess), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity
    )
    yield from loader

