"""Resource limits for untrusted files, checked *before* anything is allocated.

A datalist, a label folder or a checkpoint may come from a stranger. Their headers and stored
configs say how much memory reading them will take (a volume's shape, a checkpoint's
uncompressed size, a model's width); these limits refuse them from those numbers alone, with a
message naming the file, instead of allocating until the machine runs out of memory.

Limits live in the environment (``SWINBOB_MAX_VOXELS`` ...) so that worker processes, spawned or
forked, see what the command line set; :func:`swinbob.cli.add_limit_args` and
:func:`swinbob.cli.apply_limit_args` give every entry point the same flags.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "max_voxels": 2_000_000_000,
    "max_checkpoint_mb": 16_384,
    "max_feature_size": 192,
    "max_channels": 1024,
    "max_table_mb": 16,
}
"""Defaults: a 2-G voxel volume, a 16 GiB checkpoint, Swin-UNETR up to feature_size 192 (the
published sizes are 24, 36 and 48), 1024 input or output channels, 16 MiB text files (datalists,
label tables, label maps: the largest known, UKBOB's 50,000-case datalist, is a few MiB)."""

HELP = {
    "max_voxels": "largest volume (voxels, from the header) read from any image or label file",
    "max_checkpoint_mb": "largest uncompressed checkpoint (MiB, from its zip directory) that is loaded",
    "max_feature_size": "largest Swin-UNETR feature_size a checkpoint or flag may ask for",
    "max_channels": "largest number of input or output channels a checkpoint or flag may ask for",
    "max_table_mb": "largest text file (MiB) read whole: datalists, dataset.json, label tables, --label_map files",
}


class LimitError(ValueError):
    """An invalid limit value (flag or environment variable); the message names where it came from."""


def limit(name: str) -> int:
    """The current value of limit ``name`` (environment ``SWINBOB_<NAME>``, else the default).

    An environment value that is not a whole number of at least 1 (``abc``, ``1e3``, ``0``) is a
    :class:`LimitError` naming the variable: ignoring it would run without the limit its user set.
    """
    variable = f"SWINBOB_{name.upper()}"
    text = os.environ.get(variable)
    if text is None or not text.strip():
        return DEFAULTS[name]
    if not text.strip().isdigit() or int(text) < 1:
        raise LimitError(f"environment variable {variable}={text!r} must be a whole number of at least 1")
    return int(text)


def check_environment() -> None:
    """Parse every ``SWINBOB_<LIMIT>`` variable now (entry points call this first: one line, exit 2)."""
    for name in DEFAULTS:
        limit(name)


def set_limit(name: str, value: int) -> None:
    """Set limit ``name`` for this process and its future workers; refuses values below 1."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown limit {name!r}; choose one of {', '.join(DEFAULTS)}")
    if int(value) < 1:
        raise LimitError(f"--{name} must be at least 1, got {value}")
    os.environ[f"SWINBOB_{name.upper()}"] = str(int(value))
