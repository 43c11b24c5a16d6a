"""Safe file handling: atomic writes, NIfTI reading with clear errors, paths kept inside a root.

Every output of the toolkit goes through :func:`atomic_write` so that an interrupted run never
leaves a half-written file under the final name, and every input volume through
:func:`read_nifti` so that a broken file is reported with its name and what is wrong.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from swinbob.limits import limit

MAX_DEFLATE_RATIO = 1032
"""Deflate (gzip) cannot expand data more than ~1032-fold, so a ``.nii.gz`` whose header promises
more bytes than that is a truncated file or a lying header, refused before allocating them."""
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(\..+)?")
"""Names :func:`atomic_write` gives its temporary files (``tempfile.mkstemp``: 8 random characters)."""


GZIP_LEVEL = 1
"""Compression level of written ``.nii.gz`` (ISA-L's 0-3 scale with ``isal``, zlib's 1-9 without):
the fastest level that still compresses label maps well; predictions are written once per case
and read rarely, so speed matters more than the last percent of size."""


def _isal_gzip_open(filename: str, mode: str = "rb", compresslevel: int = GZIP_LEVEL, mtime: int = 0,
                    keep_open: bool = False) -> gzip.GzipFile:
    """nibabel's ``gzip_open`` on ISA-L (``isal.igzip``): same files (no name, ``mtime`` 0), faster to
    read and write (benchmarks/RESULTS.md). ``keep_open`` is nibabel's (indexed_gzip) option, not needed here."""
    return _DeterministicIGzipFile(filename, mode if "b" in mode else f"{mode}b", GZIP_LEVEL, mtime=mtime)


try:  # optional: pip install 'swinbob[fast]'
    from isal import igzip as _igzip

    class _DeterministicIGzipFile(_igzip.IGzipFile):
        """ISA-L gzip file that, like nibabel's ``DeterministicGzipFile``, stores no file name."""

        def __init__(self, filename: str, mode: str, compresslevel: int, mtime: int = 0) -> None:
            self.myfileobj = handle = open(filename, mode)
            super().__init__(filename="", mode=mode, compresslevel=compresslevel, fileobj=handle, mtime=mtime)

    HAVE_ISAL = True
except ImportError:  # the standard library's gzip (or indexed_gzip, which nibabel picks itself)
    HAVE_ISAL = False
_NIBABEL_GZ = nib.openers.Opener.compress_ext_map[".gz"]


def use_fast_gzip(enabled: bool = True) -> bool:
    """Read and write ``.nii.gz`` through ISA-L when ``isal`` is installed (``enabled``), else through
    nibabel's default (indexed_gzip if installed, else the standard library). Every NIfTI read and
    write of the toolkit (prediction, evaluation, SOLF, training's loaders) goes through nibabel's
    openers, so this one switch covers them; voxel values are the same either way. Returns whether
    ISA-L is in use. Called once on import."""
    fast = enabled and HAVE_ISAL
    definition = (_isal_gzip_open, _NIBABEL_GZ[1]) if fast else _NIBABEL_GZ
    for opener in (nib.openers.Opener, nib.openers.ImageOpener):
        opener.compress_ext_map[".gz"] = definition
    return fast


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

NIFTI_SUFFIXES = (".nii.gz", ".nii")
GRID_ATOL_MM = 1e-3
"""Affines of one grid (image and label, channels of a scan) may differ by float32 rounding of the
header, not by a real shift."""
GRID_RTOL = 1e-5


class NiftiError(ValueError):
    """A NIfTI file that cannot be used; the message names the file and the problem."""


class TransientReadError(NiftiError):
    """A file that could not be read for a reason outside its content (permission denied, out of
    memory): the same file may read fine later, so records of this failure are retried."""


def _read_failure(path: Path, exc: BaseException, what: str) -> NiftiError:
    """The :class:`NiftiError` for ``exc`` raised while reading ``path``: transient for permissions and
    memory (not a verdict on the file), else ``what`` (truncated, corrupt, not NIfTI). nibabel turns
    a refused ``open`` into a generic ``ImageFileError``: the causes it chains are searched too."""
    causes, seen = [], exc
    while seen is not None and len(causes) < 16:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    denied = next((c for c in causes if isinstance(c, PermissionError)), None)
    if denied is not None:
        return TransientReadError(f"{path}: permission denied ({denied.strerror or denied})")
    if isinstance(exc, PermissionError):
        return TransientReadError(f"{path}: permission denied ({exc.strerror or exc})")
    if isinstance(exc, MemoryError):
        return TransientReadError(f"{path}: out of memory while reading it")
    return NiftiError(f"{path}: {what} ({exc})")


class OutputError(OSError):
    """An output folder that cannot be used (not creatable, not writable, in use by another run)."""


SHARED_HOLDER = "parts\n"
"""What shared holders of a :func:`folder_lock` write into the lock file (an exclusive one its PID)."""
LOCK_NAME = ".swinbob.lock"
"""Lock file that :func:`folder_lock` keeps in every output folder it guards."""
MAX_NAME_BYTES = 255
"""Longest file name most file systems accept (ext4, XFS, btrfs, tmpfs)."""
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException) -> bool:
    """True for 'no space left' and 'quota exceeded' errors: not a problem of one input."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def check_writable_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work and without creating anything, an output folder that cannot be
    created or written: one below a file, or whose nearest existing folder is read-only or not
    writable by this user. Raises :class:`OutputError` naming the folder and the reason, instead of
    a traceback from the first write, hours later. Returns ``folder`` as a path."""
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(errno.ENOTDIR, f"{what} {folder} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(errno.EACCES, f"{what} {folder} cannot be written: {existing} is read-only or not writable "
                          "by this user")
    return folder


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output folder", name: str = LOCK_NAME,
                shared: bool = False, wait: bool = False) -> Iterator[Path]:
    """Hold an advisory lock (``fcntl.flock``) on ``folder`` while the block runs.

    Two runs writing into one folder would mix their outputs (predictions of one model, tables
    of the other) and delete each other's temporary files; the second run is refused at start-up
    with the PID of the first. The lock dies with its process (even after ``SIGKILL``), so a
    crashed run never leaves a folder locked; the lock file itself stays. ``name`` picks another
    lock file, for writers that may share a folder but not a part of it (one lock per SOLF shard).
    ``shared``: any number of shared holders at once (the parts of a split prediction), none while
    an exclusive one holds it. ``wait``: block until the lock is free instead of refusing.
    """
    folder = check_writable_folder(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as exc:
        raise OutputError(exc.errno, f"{what} {folder} cannot be written ({exc.strerror or exc})") from exc
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if holder == SHARED_HOLDER.strip():
            raise OutputError(errno.EBUSY, f"{what} {folder} is in use by the parts of a split run (--num_parts); "
                              "wait for them to finish or choose another folder") from exc
        raise OutputError(errno.EBUSY, f"{what} {folder} is in use by PID {holder} (another run is writing there); "
                          "wait for it to finish or choose another folder") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (SHARED_HOLDER if shared else f"{os.getpid()}\n").encode(), 0)  # shared ones all write the same
        yield folder
    finally:
        os.close(fd)  # releases the lock


def file_identity(path: str | os.PathLike) -> list[int] | None:
    """``[size, mtime_ns, inode]`` of ``path`` (None if it cannot be stat'ed): changes whenever the
    file is rewritten or replaced, which path strings alone never show."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def short_name(stem: str, suffix: str = "", most: int = MAX_NAME_BYTES) -> str:
    """``stem + suffix``, or, when that exceeds ``most`` bytes, ``stem`` cut at a character boundary plus
    ``~`` and 10 hex digits of its SHA-256: a legal but long organ or case name still gives a file
    name the file system accepts, the same one on every run, and two long names sharing a prefix differ."""
    name = f"{stem}{suffix}"
    if len(name.encode()) <= most:
        return name
    tag = "~" + hashlib.sha256(stem.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    room = most - len(f"{tag}{suffix}".encode())
    return stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore") + tag + suffix


def _temp_stem(name: str, suffix: str) -> str:
    """``name``, shortened if needed so that the temporary name (dot, name, dot, 8 random characters,
    ``.tmp`` and ``suffix``) stays within :data:`MAX_NAME_BYTES`: a legal 250-byte output name
    must not fail because of its temporary name."""
    room = MAX_NAME_BYTES - len(f"..12345678.tmp{suffix}".encode())
    encoded = name.encode()
    if len(encoded) <= room:
        return name
    return encoded[:room].decode(errors="ignore")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary name keeps ``suffix`` (e.g. ``.nii.gz``) so that writers which choose the format
    from the extension still work. The file is fsynced before ``os.replace``, so after a crash
    ``path`` holds either the old content or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{_temp_stem(path.name, suffix)}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def keep_previous(path: str | os.PathLike, previous: str | os.PathLike) -> None:
    """Make ``previous`` hold what ``path`` holds now (if it exists), before ``path`` is replaced.

    A hard link costs no copy; file systems without hard links get an :func:`atomic_write` copy.
    Either way the new ``previous`` appears under a temporary name first and is then moved into
    place, so after a crash ``previous`` holds the old or the new content, never a torn file.
    """
    path, previous = Path(path), Path(previous)
    if not path.is_file():
        return
    tmp = previous.with_name(f".{previous.name}.{secrets.token_hex(4)}.tmp")  # a name stale_temp_files knows
    try:
        os.link(path, tmp)
    except OSError:
        with atomic_write(previous) as copy:
            shutil.copyfile(path, copy)
        return
    try:
        os.replace(tmp, previous)
    finally:
        tmp.unlink(missing_ok=True)


def stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Temporary files of :func:`atomic_write` left in ``folder`` by a process killed mid-write.

    A ``SIGKILL`` (out-of-memory killer, preempted job) skips the clean-up of ``atomic_write``, so
    its temporary file stays beside the final name; the final name itself is never half-written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMP_NAME.fullmatch(p.name) and p.is_file())


def remove_stale_temp_files(folder: str | os.PathLike, names: Collection[str] | None = None) -> int:
    """Delete :func:`stale_temp_files` of ``folder``; return how many. Call it only while no other
    process writes into ``folder``, or give ``names``: then only temporary files of those final
    names go (a part of a split prediction cleans its own cases while the other parts write)."""
    stale = stale_temp_files(folder)
    if names is not None:
        stale = [p for p in stale if (m := _TEMP_NAME.fullmatch(p.name)) and m.group("name") in names]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def nifti_stem(name: str) -> str | None:
    """A NIfTI file name without its suffix (the case id of ``case.nii.gz``), or None for other files."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def nifti_suffix(path: str | os.PathLike) -> str:
    """``.nii.gz`` or ``.nii`` (the suffix nibabel needs to pick the format)."""
    name = str(path)
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis: the column norms of the affine's 3×3 part."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def same_grid(affine: np.ndarray, reference: np.ndarray) -> bool:
    """Whether two affines place voxels at the same positions (within :data:`GRID_ATOL_MM`)."""
    return bool(np.allclose(affine, reference, rtol=GRID_RTOL, atol=GRID_ATOL_MM))


def check_finite(array: np.ndarray, files: Sequence[str], what: str = "image") -> None:
    """Raise :class:`NiftiError` naming the file(s) if ``array`` holds NaN or Inf voxels.

    ``files`` is what was loaded: one path, or one path per channel (stacked on axis 0), in which
    case only the files with bad voxels are named. One NaN voxel makes a z-score normalised volume
    all NaN (its mean is NaN), and organ statistics NaN: such scans are refused, never used.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    names = list(files) or ["(in-memory data)"]
    if len(names) > 1 and array.shape[0] == len(names):
        names = [f for f, channel in zip(names, bad) if channel.any()]
    raise NiftiError(f"{', '.join(names)}: {what} contains {int(bad.sum())} NaN/Inf voxel(s); "
                     "fix or remove the scan (NaN would spread through normalisation and the loss)")


def check_affine(affine: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse affines that cannot place voxels in the world (NaN, zero spacing, singular)."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise NiftiError(f"{path}: affine contains NaN or Inf")
    spacing = voxel_spacing(affine)
    if np.any(spacing <= 1e-6):
        raise NiftiError(f"{path}: zero voxel spacing in the affine ({spacing.round(6).tolist()})")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9 * float(np.prod(spacing)):
        raise NiftiError(f"{path}: singular affine (axes are not independent)")


def _raw_header(path: Path, img: nib.Nifti1Image) -> nib.Nifti1Header:
    """The header as stored: ``nib.load`` silently repairs some fields (zero pixdim becomes 1)."""
    with nib.openers.ImageOpener(str(path)) as handle:
        return type(img.header).from_fileobj(handle, check=False)


def _data_file(img: nib.spatialimages.SpatialImage, path: Path) -> Path:
    """The file holding the voxels: ``path`` itself, or the ``.img`` of an Analyze/NIfTI pair."""
    holder = getattr(img, "file_map", {}).get("image")
    return Path(holder.filename) if holder is not None and holder.filename else path


def check_header(img: nib.spatialimages.SpatialImage, path: Path) -> None:
    """Refuse headers that promise the impossible, from the header alone, for every format nibabel
    reads (``.nii``, ``.nii.gz``, Analyze and NIfTI pairs ``.hdr``/``.img``, gzipped or not).

    * zero (or NaN) voxel spacing in ``pixdim``: nibabel would silently assume 1 mm. Negative
      pixdim is read as its absolute value, as the NIfTI standard and nibabel do (flips are
      stored in the qform's qfac or in the sform, which are honoured);
    * more data bytes than the data file can hold: an uncompressed file shorter than the header
      promises, or a gzip file that would have to expand more than deflate can. Both mean a
      truncated file or a corrupt header; refusing here avoids allocating the promised size.
    """
    if not isinstance(img.header, nib.analyze.AnalyzeHeader):
        return  # other formats (MGH, ...) keep nibabel's own checks
    spatial = min(3, len(img.shape))
    pixdim = np.asarray(_raw_header(path, img)["pixdim"][1:1 + spatial], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        raise NiftiError(f"{path}: zero or NaN voxel spacing in the header (pixdim {pixdim.tolist()})")
    data_file = _data_file(img, path)
    offset = int(img.header.get_data_offset()) if data_file == path else max(0, int(img.header.get_data_offset()))
    promised = offset + math.prod(int(n) for n in img.shape) * img.get_data_dtype().itemsize
    try:
        size = data_file.stat().st_size
    except OSError as exc:
        raise NiftiError(f"{path}: its data file {data_file.name} cannot be read ({exc.strerror or exc})") from exc
    if data_file.name.endswith(".gz"):
        if promised > MAX_DEFLATE_RATIO * size + 65536:
            raise NiftiError(f"{path}: truncated or corrupt header: it promises {promised} bytes of data, more than a "
                             f"gzip file of {size} bytes can hold")
    elif size < promised:
        raise NiftiError(f"{path}: truncated: the header promises {promised} bytes, {data_file.name} has {size}")


def read_bounded_text(path: str | os.PathLike, what: str = "text file") -> str:
    """The UTF-8 text of a regular file no larger than ``--max_table_mb``, read whole.

    A device (``/dev/zero``), a FIFO or an oversized file is refused before its content is read
    (``OSError``/``ValueError``; callers name the file), so a small flag cannot make a command read
    without end. ``UnicodeDecodeError`` propagates for callers that name the flag.
    """
    path = Path(path)
    most = limit("max_table_mb") * 2**20
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would block a plain open
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # checked first: a folder cannot even be wrapped in a file
        os.close(descriptor)
        raise ValueError(f"not a regular file (a {what} must be one)")
    with open(descriptor, "rb", closefd=True) as handle:
        data = handle.read(most + 1)
    if len(data) > most:
        raise ValueError(f"{what} larger than {most // 2**20} MiB (--max_table_mb)")
    return data.decode("utf-8")


def resampled_shape(shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]) -> tuple[int, ...]:
    """The shape of a volume of ``shape`` (channels after the 3 spatial axes) once resampled to
    ``spacing`` (mm, RAS axes): each file axis grows by its voxel size over the target spacing of
    the RAS axis it maps to."""
    to_ras = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    sizes = voxel_spacing(affine)
    spatial = []
    for axis in range(3):
        ras_axis = int(to_ras[axis, 0]) if np.isfinite(to_ras[axis, 0]) else axis
        spatial.append(max(1, math.ceil(int(shape[axis]) * float(sizes[axis]) / float(spacing[ras_axis]))))
    return (*spatial, *(int(s) for s in shape[3:]))


def check_resampled_size(path: str | os.PathLike, shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]) -> None:
    """Refuse a volume whose resampling to ``spacing`` would exceed ``--max_voxels`` (a 16^3 scan whose
    header says 600 mm voxels becomes 6400^3 at 1.5 mm), from its header alone, before any allocation."""
    if len(shape) < 3:
        return
    target = resampled_shape(shape, affine, spacing)
    if math.prod(target) > (most := limit("max_voxels")):
        raise NiftiError(f"{path}: volume of shape {tuple(int(s) for s in shape)} resampled to {tuple(spacing)} mm would be "
                         f"{target}, larger than {most} voxels (--max_voxels)")


def load_nifti_header(path: str | os.PathLike) -> nib.Nifti1Image:
    """Open a NIfTI lazily and validate its header: exists, readable, sane size, spacing and affine."""
    path = Path(path)
    try:
        regular = path.is_file()
    except PermissionError as exc:  # a folder on the way that this user may not enter
        raise _read_failure(path, exc, "not a readable NIfTI file") from exc
    if not regular:  # a FIFO would block its reader for ever: never opened
        if path.is_symlink() and not path.exists():
            raise NiftiError(f"{path}: a symbolic link to a missing file")
        raise NiftiError(f"{path}: not a regular file" if path.exists() else f"{path}: file not found")
    try:
        with open(path, "rb"):  # a refused open is transient (permissions): nibabel would call it "not NIfTI"
            pass
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken headers
        raise _read_failure(path, exc, "not a readable NIfTI file") from exc
    shape = img.shape
    if len(shape) == 0 or any(int(s) <= 0 for s in shape):
        raise NiftiError(f"{path}: empty volume (shape {tuple(shape)})")
    if math.prod(int(s) for s in shape) > (most := limit("max_voxels")):  # exact: int64 products of 7 dims wrap
        raise NiftiError(f"{path}: volume of shape {tuple(shape)} is larger than {most} voxels (--max_voxels)")
    try:
        check_header(img, path)
    except NiftiError:
        raise
    except (OSError, ValueError, EOFError, MemoryError) as exc:  # the raw header could not be read again
        raise _read_failure(path, exc, "not a readable NIfTI file") from exc
    check_affine(img.affine, path)
    return img


def read_nifti(path: str | os.PathLike, ndim: int | None = 3, dtype: type | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume and return ``(array, affine)``.

    ``ndim`` requires that many dimensions (trailing singleton dimensions are squeezed first, as
    scanners often write 3D volumes as X×Y×Z×1). Truncated or corrupt data is reported as a
    :class:`NiftiError` naming the file instead of an exception from deep inside zlib.
    """
    img = load_nifti_header(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated gzip streams raise EOFError, OSError, zlib.error ...
        raise _read_failure(path, exc, "data could not be read; the file is truncated or corrupt") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if ndim is not None and data.ndim != ndim:
        raise NiftiError(f"{path}: expected a {ndim}D volume, got shape {data.shape}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, np.asarray(img.affine, dtype=np.float64)


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None) -> Path:
    """Write ``array`` as NIfTI atomically; ``header`` (if given) is copied and its dtype updated."""
    path = Path(path)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(np.asarray(array).dtype)
    if header is None:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    with atomic_write(path, suffix=nifti_suffix(path)) as tmp:
        nib.save(img, str(tmp))
    return path


def resolve_inside(root: str | os.PathLike, relative: str | os.PathLike, allow_absolute: bool = False) -> Path:
    """Join ``relative`` to ``root`` and refuse results that escape ``root``.

    Datalists from other people may hold ``../../etc/passwd`` or absolute paths; those are refused
    with a clear message unless ``allow_absolute`` is set (then absolute paths are taken as given;
    relative ones must still stay inside ``root``).

    Containment is checked on the path as written, with ``..`` collapsed lexically: a datalist
    cannot climb out of ``root``, not even through a link (``link/..`` names ``root`` itself, as
    the returned path says). Symbolic links *inside* ``root`` are followed when the file is opened:
    they are the data owner's choice (``imagesTr`` linked to a bigger disk is common), not the
    datalist's, and refusing them would break such layouts.
    """
    text = os.fspath(relative)
    if not isinstance(text, str) or not text or "\0" in text:
        raise ValueError(f"path {text!r} refused (must be a non-empty text without NUL characters)")
    root_path = Path(root).resolve()
    rel = Path(text)
    if rel.is_absolute():
        if allow_absolute:
            return rel
        raise ValueError(f"absolute path {text!r} refused (paths must be relative to {root_path}; "
                         "pass --allow_absolute_paths to accept absolute paths)")
    candidate = Path(os.path.normpath(root_path / rel))
    if candidate != root_path and root_path not in candidate.parents:
        raise ValueError(f"path {text!r} escapes the directory {root_path}")
    return candidate


use_fast_gzip()
