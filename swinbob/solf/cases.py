"""Finding the scans of a SOLF run on disk and measuring one scan (the unit of parallel work).

A case is one label file ``{case_id}.nii.gz`` (or ``.nii``) in the input folder, or one folder
``{case_id}/`` of per-structure masks as TotalSegmentator writes them (``liver.nii.gz``, ...,
merged on the fly, see :mod:`swinbob.solf.structures`). Its images, when
an image folder is given, are found by case id in either naming scheme:

* UKBOB: ``{case_id}_{channel}.nii.gz`` per channel name (``fat``, ``in_phase``, ...);
* nnU-Net: ``{case_id}_0000.nii.gz``, ``{case_id}_0001.nii.gz``, ... in channel-name order.

Every problem with one scan becomes a failed record with a readable reason; only configuration
problems (missing folders, no scans) raise.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from swinbob.errors import ConfigError
from swinbob.files import NIFTI_SUFFIXES, NiftiError, TransientReadError, check_finite, nifti_stem, read_nifti, same_grid
from swinbob.solf.features import MAX_LABEL, LabelError, measure_organs, validate_labels
from swinbob.solf.structures import is_structure_folder, mask_files, read_label_source

FEATURE_FORMAT = 1
"""Bumped when the feature definitions change, so that resumed runs re-measure every scan."""


@dataclass(frozen=True)
class CaseTask:
    """Everything a worker process needs to measure one scan (plain, picklable values)."""

    case_id: str
    label_path: str
    image_paths: tuple[str, ...]
    channel_names: tuple[str, ...]
    fingerprint: str
    image_error: str | None = None
    max_label: int = MAX_LABEL
    body_path: str | None = None
    structures: tuple[tuple[str, int], ...] = ()
    """``(name, id)`` of the label set when ``label_path`` is a folder of per-structure masks."""


def case_id_of(path: Path) -> str | None:
    """Case id of a NIfTI file name (suffix removed), or None for other and hidden files."""
    return None if path.name.startswith(".") else nifti_stem(path.name)


def is_text(name: str) -> bool:
    """False for file names that are not valid UTF-8 (Python decodes them to lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_READ = {".hdr": "Analyze/NIfTI-pair header (.hdr/.img) is not read; convert the pair to .nii.gz",
            ".img": "Analyze/NIfTI-pair data (.hdr/.img) is not read; convert the pair to .nii.gz",
            ".hdr.gz": "Analyze/NIfTI-pair header (.hdr/.img) is not read; convert the pair to .nii.gz",
            ".img.gz": "Analyze/NIfTI-pair data (.hdr/.img) is not read; convert the pair to .nii.gz"}


def _not_a_case(path: Path) -> str | None:
    """Why a file that looks like an input cannot be one (None: not an input, or a usable file).

    Dangling links, FIFOs and other special files named like label maps, and Analyze pairs, are
    reported instead of skipped silently (a FIFO would also block any reader forever)."""
    if path.name.startswith("."):
        return None
    if case_id_of(path) is None:
        return next((reason for suffix, reason in NOT_READ.items() if path.name.endswith(suffix)), None)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path}: a symbolic link to a missing file ({os.readlink(path)})" if path.is_symlink() else None
    except OSError as exc:
        return f"{path}: cannot be inspected ({exc.strerror or exc})"
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        return f"{path}: {kind}, not a label file"
    return None


def discover_inputs(input_dir: Path, exclude: tuple[Path, ...] = ()) -> tuple[dict[str, Path], dict[str, str]]:
    """Label files (and folders of per-structure masks) of ``input_dir`` by case id, sorted, and the
    files that look like inputs but cannot be read (``name -> reason``, see :func:`_not_a_case`);
    refuses a missing or empty folder. Folders in ``exclude`` (the run's outputs, its image and
    body mask folders) are no cases."""
    if not input_dir.is_dir():
        raise ConfigError(f"input folder {input_dir} does not exist")
    cases: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    excluded = {p.resolve() for p in exclude}
    for path in sorted(input_dir.iterdir()):
        if (reason := _not_a_case(path)) is not None:
            skipped[path.name] = reason
            continue
        folder = is_structure_folder(path) and path.resolve() not in excluded
        case_id = path.name if folder else case_id_of(path)
        if case_id is None or not (folder or path.is_file()):
            continue
        if not is_text(case_id):  # would crash the report writers after hours of work
            raise ConfigError(f"file name {path.name!r} in {input_dir} is not valid UTF-8; rename it")
        if case_id in cases:
            raise ConfigError(f"case {case_id!r} appears twice in {input_dir} ({cases[case_id].name}, {path.name})")
        cases[case_id] = path
    if not cases:
        extra = f" ({len(skipped)} file(s) not read, e.g. {next(iter(skipped.values()))})" if skipped else ""
        raise ConfigError(f"no label files (*.nii.gz, *.nii) nor folders of structure masks in {input_dir}{extra}")
    return dict(sorted(cases.items())), skipped


def discover_cases(input_dir: Path) -> dict[str, Path]:
    """Label files of ``input_dir`` by case id (see :func:`discover_inputs`)."""
    return discover_inputs(input_dir)[0]


def find_image_channels(image_names: set[str], image_dir: Path, case_id: str,
                        channel_names: tuple[str, ...]) -> tuple[str, ...]:
    """Paths of the image channels of ``case_id`` in channel order (UKBOB or nnU-Net naming).

    ``image_names`` is the listing of ``image_dir`` (read once per run, not once per case).
    Raises ``FileNotFoundError`` naming what was looked for when no complete set exists.
    """
    for pattern in ("{case}_{name}{suffix}", "{case}_{index:04d}{suffix}"):
        found = []
        for index, name in enumerate(channel_names):
            for suffix in NIFTI_SUFFIXES:
                candidate = pattern.format(case=case_id, name=name, index=index, suffix=suffix)
                if candidate in image_names:
                    found.append(str(image_dir / candidate))
                    break
        if len(found) == len(channel_names):
            return tuple(found)
    raise FileNotFoundError(f"images not found in {image_dir}: expected {case_id}_{{{','.join(channel_names)}}}.nii.gz "
                            f"or {case_id}_0000..{len(channel_names) - 1:04d}.nii.gz")


def fingerprint(paths: list[str], channel_names: tuple[str, ...], max_label: int = MAX_LABEL,
                structures: tuple[tuple[str, int], ...] = ()) -> str:
    """Identity of a scan's inputs (size and modification time of each file, feature format).

    A resumed run re-measures a scan whose fingerprint changed, so edited or replaced files are
    never served stale features. Another label set (its highest ID) changes what is valid, so it
    is part of the identity too (left out for the default set, so older logs stay current), and so
    are the names of ``structures`` for folders of per-structure masks (names make the IDs).
    """
    parts: list = [FEATURE_FORMAT, list(channel_names)]
    if max_label != MAX_LABEL:
        parts.append(["max_label", max_label])
    if structures:
        parts.append(["structures", [list(s) for s in structures]])
    for path in paths:
        try:
            stat = os.stat(path)
            parts.append([Path(path).name, stat.st_size, stat.st_mtime_ns])
        except OSError:
            parts.append([Path(path).name, None])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def make_task(case_id: str, label_path: Path, image_dir: Path | None, image_names: set[str],
              channel_names: tuple[str, ...], max_label: int = MAX_LABEL, body_dir: Path | None = None,
              structures: tuple[tuple[str, int], ...] = ()) -> CaseTask:
    """The :class:`CaseTask` of one case, with its image channels resolved if images are used, and
    its body mask ``{body_dir}/{case_id}.nii.gz`` (or ``.nii``) if body masks are used;
    ``structures`` names the IDs of a folder of per-structure masks (unused for label files)."""
    image_paths: tuple[str, ...] = ()
    image_error = None
    if image_dir is not None:
        try:
            image_paths = find_image_channels(image_names, image_dir, case_id, channel_names)
        except FileNotFoundError as exc:
            image_error = str(exc)
    names = channel_names if image_dir is not None else ()
    body = None
    if body_dir is not None:
        body = next((str(body_dir / f"{case_id}{s}") for s in NIFTI_SUFFIXES if (body_dir / f"{case_id}{s}").is_file()),
                    str(body_dir / f"{case_id}.nii.gz"))  # a missing mask fails the scan with its path
    folder = label_path.is_dir()
    structures = structures if folder else ()
    labels = [str(p) for p in mask_files(label_path)] if folder else [str(label_path)]
    inputs = [*labels, *image_paths, *([body] if body else [])]
    return CaseTask(case_id, str(label_path), image_paths, names, fingerprint(inputs, names, max_label, structures),
                    image_error, max_label, body, structures)


def body_volume(path: str, shape: tuple[int, ...], affine: np.ndarray) -> float:
    """Volume (mm³) of the non-zero voxels of a body mask on the label grid.

    A mask with NaN/Inf voxels or without any body voxel is refused (the scan fails, naming the
    file): NaN counted as body and an empty mask was silently replaced by the union of the labels.
    """
    mask, mask_affine = read_nifti(path, ndim=3)
    if mask.shape != shape or not same_grid(mask_affine, affine):
        raise NiftiError(f"{path}: body mask/label grid mismatch (shape {mask.shape}, label shape {shape})")
    check_finite(mask, [path], "body mask")
    count = int(np.count_nonzero(mask))
    if count == 0:
        raise NiftiError(f"{path}: the body mask is empty (no non-zero voxel)")
    return float(count) * abs(float(np.linalg.det(affine[:3, :3])))


def _read_images(task: CaseTask, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The image channels as one (C, X, Y, Z) float32 array, checked against the label grid.

    NaN or Inf voxels are refused: they would make the organ intensity statistics NaN, and the
    scan would carry them into training through dataset.json (which refuses them as well).
    """
    images = np.empty((len(task.image_paths), *shape), dtype=np.float32)  # filled in place: no stacked copy
    for index, path in enumerate(task.image_paths):
        data, image_affine = read_nifti(path, ndim=3)
        if data.shape != shape:
            raise NiftiError(f"{path}: image/label grid mismatch (image shape {data.shape}, label shape {shape})")
        if not same_grid(image_affine, affine):
            raise NiftiError(f"{path}: image/label grid mismatch (affines differ)")
        images[index] = data
        if data.dtype.kind not in "iub":  # integers are always finite in float32
            check_finite(images[index], [path])
    return images


def failed_record(task: CaseTask, reason: str, retry: bool = False) -> dict:
    """The record of a scan that could not be measured; ``retry`` marks causes outside the file
    (permissions, memory), which the next run measures again."""
    record = {"case_id": task.case_id, "status": "failed", "reason": reason, "fingerprint": task.fingerprint}
    return {**record, "retry": True} if retry else record


def measure_case(task: CaseTask) -> dict:
    """Read, validate and measure one scan; never raises for problems of the scan itself.

    Returns a JSON-ready record: ``status`` ``ok`` with grid information and the organ feature
    columns, or ``failed`` with the reason (unreadable or truncated file, 4D volume, values that
    are no TotalVibeSegmentator IDs, no organ at all, missing images, NaN/Inf image voxels,
    image/label grid mismatch).
    """
    try:
        source = read_label_source(task.label_path, task.structures)
        label, affine = validate_labels(source.data, task.max_label), source.affine
        if task.image_error:
            return failed_record(task, task.image_error)
        images = _read_images(task, label.shape, affine) if task.image_paths else None
        organs = measure_organs(label, affine, images, task.channel_names)
        if not organs["label"]:  # a failed segmentation: training on it would teach "no organs"
            raise LabelError("no organ labelled (the label map is all background or ignore)")
        body = {"body_volume_mm3": body_volume(task.body_path, label.shape, affine)} if task.body_path else {}
    except LabelError as exc:
        return failed_record(task, f"{task.label_path}: {exc}")
    except TransientReadError as exc:
        return failed_record(task, f"{exc} (measured again on the next run)", retry=True)
    except MemoryError:
        return failed_record(task, f"{task.label_path}: out of memory while measuring it (measured again on the next run)",
                             retry=True)
    except (NiftiError, OSError) as exc:
        return failed_record(task, str(exc), retry=isinstance(exc, PermissionError))
    return {
        "case_id": task.case_id, "status": "ok", "reason": "", "fingerprint": task.fingerprint,
        "shape": list(label.shape), "spacing": np.linalg.norm(affine[:3, :3], axis=0).round(6).tolist(),
        "orientation": "".join(nib.aff2axcodes(affine)), **body, "organs": organs,
        **({"notes": source.notes} if source.notes else {}),
    }
