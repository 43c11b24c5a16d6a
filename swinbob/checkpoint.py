"""Checkpoint files: atomic saving, safe loading, and weight transfer between Swin-UNETR variants.

Our format is a plain dict (see :func:`make_checkpoint`) loadable with ``weights_only=True``, so a
checkpoint from a stranger can never run code. :func:`load_state_dict_from` also reads the
upstream research format (``{"state_dict", "epoch", "best_acc"}`` with a numpy ``best_acc``), bare
state dicts, DDP/compile/backbone prefixes, and MONAI's self-supervised Swin-ViT encoder weights.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swinbob.files import atomic_write, keep_previous
from swinbob.limits import limit

FORMAT_VERSION = 1
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_SSL_ENCODER_KEYS = re.compile(r"^(patch_embed|layers[1-4])\.")
MAX_EXPANSION = 4
"""``torch.save`` stores tensors uncompressed; even a checkpoint re-zipped with deflate shrinks
little (float weights compress ~1.1-fold). One that would expand more than this is refused."""

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def _numpy_safe_globals() -> list:
    """Numpy types that upstream checkpoints pickle (``best_acc`` as a numpy scalar); data only."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def check_unpacked_size(path: Path) -> None:
    """Refuse, from the zip directory alone, a checkpoint that would unpack to more than
    ``--max_checkpoint_mb`` or expand more than :data:`MAX_EXPANSION`-fold (a compression bomb)."""
    size = path.stat().st_size
    most = limit("max_checkpoint_mb") * 2**20
    unpacked = size
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                unpacked = sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc})") from exc
        if unpacked > MAX_EXPANSION * size + 2**24:
            raise CheckpointError(f"refusing to load {path}: its {size} bytes would unpack to {unpacked} bytes "
                                  "(a compression bomb, or a corrupt zip directory)")
    if unpacked > most:
        raise CheckpointError(f"refusing to load {path}: it unpacks to {unpacked / 2**20:.0f} MiB, more than the limit "
                              f"of {most // 2**20} MiB (--max_checkpoint_mb)")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``) onto the CPU.

    Raises :class:`CheckpointError` for a missing, truncated or corrupt file, and for a pickle
    that needs arbitrary Python classes (which could run code when loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted write?")
    check_unpacked_size(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it needs Python objects beyond tensors and plain data, "
            f"which could run arbitrary code. Only load it if you trust its author, and re-save it "
            f"as a plain state_dict. Details: {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc})") from exc
    if isinstance(obj, dict):
        return obj
    raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP ``module.``, ``torch.compile`` ``_orig_mod.`` and ``backbone.`` key prefixes."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def _ssl_to_swinunetr(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map MONAI self-supervised Swin-ViT encoder keys onto SwinUNETR's ``swinViT.`` names."""
    out = {}
    for key, value in state.items():
        if _SSL_ENCODER_KEYS.match(key):
            key = "swinViT." + key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
        out[key] = value
    return out


def extract_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Find the model weights in any supported checkpoint layout and normalise their names."""
    for key in ("model", "state_dict", "model_state_dict", "net"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError("no tensors found in the checkpoint (expected a state_dict)")
    return _ssl_to_swinunetr(strip_prefixes(state))


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did, for the log and for tests."""

    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    total: int = 0

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)}/{self.total} tensors"]
        if self.shape_mismatch:
            lines.append(f"  re-initialised (shape differs): {', '.join(self.shape_mismatch)}")
        if self.missing:
            lines.append(f"  re-initialised (not in checkpoint): {len(self.missing)} tensors, e.g. {', '.join(self.missing[:5])}")
        if self.unexpected:
            lines.append(f"  skipped (not in model): {len(self.unexpected)} tensors, e.g. {', '.join(self.unexpected[:5])}")
        return "\n".join(lines)


def transfer_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> TransferReport:
    """Copy every tensor whose name and shape match into ``model``; report the rest.

    Used both for exact loading and for fine-tuning into another head (73 UKBOB outputs into 14
    BTCV ones): mismatching tensors keep the model's fresh initialisation. Zero matches is an
    error, because it always means the wrong file or an unknown key layout.
    """
    own = model.state_dict()
    report = TransferReport(total=len(own))
    to_load = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.shape_mismatch.append(f"{key} {tuple(value.shape)}->{tuple(own[key].shape)}")
        else:
            to_load[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state]
    if not to_load:
        raise CheckpointError(f"{source}: no tensor matches the model by name and shape (wrong file or model?)")
    model.load_state_dict(to_load, strict=False)
    return report


def load_exactly(model: torch.nn.Module, checkpoint: dict[str, Any], source: str, hint: str = "") -> TransferReport:
    """Load every weight of ``model`` from a loaded ``checkpoint`` (any format :func:`extract_state_dict` reads).

    A missing or misshapen tensor is a :class:`CheckpointError` in one line naming ``source``,
    counting both kinds with examples, and ending with ``hint`` (what to check).
    """
    report = transfer_weights(model, extract_state_dict(checkpoint), source=source)
    if report.missing or report.shape_mismatch:
        examples = ", ".join((report.shape_mismatch + report.missing)[:3])
        raise CheckpointError(f"{source} does not fit the model: {len(report.shape_mismatch)} tensors differ in shape and "
                              f"{len(report.missing)} are missing (e.g. {examples}){'; ' + hint if hint else ''}")
    return report


def load_weights(model: torch.nn.Module, path: str | os.PathLike, strict: bool = False) -> TransferReport:
    """Load weights from ``path`` into ``model``; with ``strict`` every model tensor must match
    (:func:`load_exactly`), else the matching ones are copied (:func:`transfer_weights`)."""
    checkpoint = load_checkpoint(path)
    if strict:
        report = load_exactly(model, checkpoint, str(path))
    else:
        report = transfer_weights(model, extract_state_dict(checkpoint), source=str(path))
    log.info("%s: %s", path, report.summary())
    return report


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights on the CPU under plain names (no DDP or compile wrappers)."""
    return strip_prefixes({k: v.detach().cpu() for k, v in model.state_dict().items()})


def make_checkpoint(model: torch.nn.Module, config: dict, **state: Any) -> dict[str, Any]:
    """Assemble our checkpoint dict; ``state`` holds optimizer, scheduler, scaler, epoch, ... ."""
    return {"format_version": FORMAT_VERSION, "model": model_state(model), "config": config, **state}


def _check_finite(state: dict[str, torch.Tensor]) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to save a checkpoint with NaN/Inf weights in {', '.join(bad[:5])}")


def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaced: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any], keep_previous_file: bool = False) -> Path:
    """Write ``checkpoint`` atomically: a crash or a write error leaves the previous file intact,
    never a torn one; write errors raise :class:`CheckpointError`.

    With ``keep_previous_file`` the file being replaced stays as :func:`previous_checkpoint`, a
    second line of defence for when the newest file is damaged after it was written (a disk
    error, a truncating copy): resuming then falls back to it.
    """
    if isinstance(checkpoint.get("model"), dict):
        _check_finite(checkpoint["model"])
    for key in ("best_metric", "best_acc"):
        value = checkpoint.get(key)
        if isinstance(value, (np.floating, np.integer)):
            checkpoint[key] = value.item()
        if isinstance(checkpoint.get(key), float) and math.isnan(checkpoint[key]):
            checkpoint[key] = None
    try:
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)
            if keep_previous_file:  # only once the new file is complete: a failed save rotates nothing
                keep_previous(path, previous_checkpoint(path))
    except OSError as exc:  # a full disk, a quota, a vanished network share
        raise CheckpointError(f"could not write checkpoint {path} ({exc}); the file under that name is unchanged") from exc
    return Path(path)
