"""Untrusted files: checkpoints that would run code, datalists that point outside their data
folder, and SOLF output names derived from input file names.

Decisions this suite pins down:

* a checkpoint is loaded with ``weights_only=True``; any pickle needing more than tensors, plain
  containers and numpy data is refused *before* it runs, whatever the wrapping (zip or plain
  pickle, payload nested deep, inside a numpy object array, pickle swapped into a valid zip);
* a datalist path must stay inside ``--data_dir`` as written (``..`` collapsed lexically);
  absolute paths need ``--allow_absolute_paths``, which never admits ``..`` escapes. Symbolic
  links *inside* the data folder are followed: they are the data owner's layout, not the
  datalist's (``imagesTr`` linked to a bigger disk is common);
* SOLF writes only inside ``--output_dir``: case ids come from file names (no ``/``; hidden
  files are skipped, so ``..`` cannot be a case id), stale outputs are removed by exact name (a
  case id may contain glob characters), and a planted symbolic link at an output name is
  replaced, never written through.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from faults_report import handled, record_fault, record_input, refused
from swinbob.checkpoint import CheckpointError, load_checkpoint
from swinbob.data.transforms import load_datalist
from swinbob.files import resolve_inside
from swinbob.data.loaders import DatalistError, load_splits
from swinbob.data.phantoms import write_cohort
from swinbob.solf.cli import organ_filtering_entry

pytestmark = pytest.mark.faults


# ----------------------------------------------------------------------------------------------
# Checkpoints that would run code
# ----------------------------------------------------------------------------------------------

class _Touch:
    """Unpickling this creates ``marker``: proof that the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Eval:
    """The same through ``builtins.eval`` (a different global than ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.eval, (f"open({self.marker!r}, 'w').close()",))


def _nested(payload: object) -> dict:
    """A real-looking checkpoint with the payload four containers deep."""
    return {"model": {"w": torch.zeros(2)}, "config": {"extras": [{"history": (1, {"note": payload})}]}, "epoch": 3}


def _write_torch(path: Path, obj: object) -> None:
    torch.save(obj, path)


def _write_pickle(protocol: int):
    def write(path: Path, obj: object) -> None:
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=protocol)
    return write


def _write_swapped_zip(path: Path, obj: object) -> None:
    """A valid torch zip checkpoint whose ``data.pkl`` member is replaced by ``obj``'s pickle."""
    clean = path.with_suffix(".clean")
    torch.save({"model": {"w": torch.zeros(2)}}, clean)
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = pickle.dumps(obj, protocol=2) if name.endswith("data.pkl") else source.read(name)
            target.writestr(name, data)
    clean.unlink()


def _write_npy(path: Path, obj: np.ndarray) -> None:
    with open(path, "wb") as handle:  # exactly at ``path`` (np.save would append .npy to the name)
        np.save(handle, obj, allow_pickle=True)


CHECKPOINTS = {
    "torch zip, os.system payload nested 4 deep": (_write_torch, lambda m: _nested(_Touch(m))),
    "torch zip, builtins.eval payload": (_write_torch, lambda m: {"model": {"w": torch.zeros(2)}, "x": _Eval(m)}),
    "torch zip, payload in a numpy object array": (_write_torch, lambda m: {"model": {"w": torch.zeros(2)},
                                                                            "extra": np.array([_Touch(m)], dtype=object)}),
    "valid torch zip with its data.pkl swapped": (_write_swapped_zip, lambda m: {"model": _Touch(m)}),
    "plain pickle, protocol 0 (text)": (_write_pickle(0), lambda m: {"state_dict": _Touch(m)}),
    "plain pickle, protocol 4": (_write_pickle(4), lambda m: {"state_dict": {"w": torch.zeros(2)}, "p": _Touch(m)}),
    "numpy .npy with pickled object array": (lambda p, o: _write_npy(p, o), lambda m: np.array([_Touch(m)], dtype=object)),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on protocol 4, irrelevant here
@pytest.mark.parametrize("variant", list(CHECKPOINTS))
def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(variant, tmp_path):
    write, payload = CHECKPOINTS[variant]
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil checkpoint.pt"
    write(path, payload(marker))
    assert not marker.exists()  # writing did not run it
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    record_input("untrusted checkpoint", variant, refused(error.value, strip=tmp_path))
    assert not marker.exists(), "the payload ran"
    assert path.name in str(error.value) and ("refusing" in str(error.value) or "corrupt" in str(error.value))


# ----------------------------------------------------------------------------------------------
# Datalists pointing outside their data folder
# ----------------------------------------------------------------------------------------------

@pytest.fixture()
def data_dir(tmp_path) -> Path:
    """``data/`` with one image, plus ``outside/`` beside it and ``data/linked`` -> ``outside``."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "imagesTr").mkdir(parents=True)
    outside.mkdir()
    (data / "imagesTr" / "a.nii.gz").write_bytes(b"inside")
    (outside / "secret.nii.gz").write_bytes(b"outside")
    (data / "linked").symlink_to(outside, target_is_directory=True)
    return data


# (path in the datalist, allow_absolute, expected: "refused:<words>" or "inside:<path relative to data>")
DATALIST_PATHS = [
    ("../../etc/passwd", False, "refused:escapes"),
    ("../../etc/passwd", True, "refused:escapes"),
    ("imagesTr/../../outside/secret.nii.gz", False, "refused:escapes"),
    ("linked/../../outside/secret.nii.gz", False, "refused:escapes"),
    ("/etc/passwd", False, "refused:absolute path"),
    ("/etc/passwd", True, "absolute:/etc/passwd"),
    ("imagesTr/../imagesTr/a.nii.gz", False, "inside:imagesTr/a.nii.gz"),
    ("linked/secret.nii.gz", False, "inside:linked/secret.nii.gz"),
    ("linked/..", False, "inside:."),
    ("imagesTr/a\x00.nii.gz", False, "refused:NUL"),
    ("", False, "refused:non-empty"),
    (42, False, "refused:must be a path"),
    (None, False, "refused:must be a path"),
    ([], False, "refused:must be a path"),
    ({"path": "imagesTr/a.nii.gz"}, False, "refused:must be a path"),
]


@pytest.mark.parametrize("value,allow_absolute,expected", DATALIST_PATHS,
                         ids=[f"{v!r}{'-allow_absolute' if a else ''}" for v, a, _ in DATALIST_PATHS])
def test_datalist_paths_stay_inside_the_data_folder(data_dir, value, allow_absolute, expected):
    datalist = data_dir / "dataset.json"
    datalist.write_text(json.dumps({"training": [{"image": value, "label": "imagesTr/a.nii.gz"}]}))
    kind, _, detail = expected.partition(":")
    flag = " with --allow_absolute_paths" if allow_absolute else ""
    try:
        [entry] = load_datalist(datalist, data_dir, allow_absolute=allow_absolute)
    except ValueError as exc:
        record_input("untrusted datalist", f"image {value!r}{flag}", refused(exc, strip=data_dir.parent))
        assert kind == "refused", f"{value!r} was refused: {exc}"
        assert detail in str(exc) and str(datalist) in str(exc) and "entry 0 of 'training'" in str(exc)
        return
    where = entry["image"]
    record_input("untrusted datalist", f"image {value!r}{flag}", handled(f"-> {where.replace(str(data_dir.parent), '…')}"))
    assert kind != "refused", f"{value!r} was accepted as {where}"
    if kind == "absolute":
        assert where == detail
    else:
        assert where == os.path.normpath(data_dir.resolve() / detail)


def test_training_reports_an_escaping_datalist_path_as_a_datalist_error(data_dir):
    datalist = data_dir / "dataset.json"
    datalist.write_text(json.dumps({"training": [{"image": "imagesTr/a.nii.gz", "label": "../../etc/shadow"}]}))
    with pytest.raises(DatalistError, match=r"escapes the directory") as error:
        load_splits(datalist, data_dir, allow_absolute=True)
    assert "../../etc/shadow" in str(error.value)


def test_a_linked_data_folder_reads_the_linked_file(data_dir):
    [entry] = load_datalist(_one_entry(data_dir, "linked/secret.nii.gz"), data_dir)
    assert Path(entry["image"]).read_bytes() == b"outside"
    assert Path(entry["image"]).parent == data_dir.resolve() / "linked"  # reported under its link, inside data/


def _one_entry(data_dir: Path, image: str) -> Path:
    datalist = data_dir / "one.json"
    datalist.write_text(json.dumps({"training": [{"image": image}]}))
    return datalist


def test_resolve_inside_keeps_the_previous_contract_for_plain_paths(tmp_path):
    assert resolve_inside(tmp_path, "x/y.nii.gz") == tmp_path.resolve() / "x" / "y.nii.gz"
    assert resolve_inside(tmp_path, ".") == tmp_path.resolve()


# ----------------------------------------------------------------------------------------------
# SOLF output names derived from input file names
# ----------------------------------------------------------------------------------------------

def _solf(labels: Path, out: Path, *extra: str) -> int:
    return organ_filtering_entry(["--input_dir", str(labels), "--output_dir", str(out), "--workers", "1",
                                  "--no_figure", "--log_level", "ERROR", "--min_population", "3",
                                  "--max_rejected_fraction", "1", *extra])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("untrusted_cohort")
    write_cohort("ukbob", root, 5, shape=(24, 24, 28), seed=2)
    return root / "labelsTr"


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_solf_writes_only_inside_its_output_folder_whatever_the_input_names(cohort, tmp_path):
    names = ["ukbob_*", "line\nbreak", "..hidden_dots", "-rf", "…ellipsis", "..", "."]
    labels = tmp_path / "in"
    labels.mkdir()
    sources = sorted(cohort.iterdir())
    for source, name in zip(sources, names[:5]):
        shutil.copy(source, labels / f"{name}.nii.gz")
    for name in names[5:]:  # "...nii.gz" and "..nii.gz": hidden files, never case ids
        shutil.copy(sources[0], labels / f"{name}.nii.gz")
    before = _tree(tmp_path)
    out = tmp_path / "out"
    assert _solf(labels, out) == 0
    created = _tree(tmp_path) - before
    assert created and all(p.startswith("out") for p in created), sorted(created)
    written = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert written == sorted(f"{n}.nii.gz" for n in names[:5] if not n.startswith("."))
    record_input("untrusted names", "SOLF case ids 'ukbob_*', 'line\\nbreak', '-rf', '…', '..', '.'",
                 handled(f"{len(written)} outputs, all inside output_dir; dot files skipped as hidden"))


def test_removing_a_case_with_glob_characters_deletes_only_its_own_output(cohort, tmp_path):
    """Regression: stale outputs were removed with ``glob(case_id + '.nii*')``, so dropping the
    case ``ukbob_*`` deleted every other case's cleaned label while dataset.json still listed them."""
    labels = tmp_path / "in"
    shutil.copytree(cohort, labels)
    shutil.copy(labels / "ukbob_0000.nii.gz", labels / "ukbob_*.nii.gz")
    out = tmp_path / "out"
    assert _solf(labels, out) == 0
    (labels / "ukbob_*.nii.gz").unlink()
    assert _solf(labels, out) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    listed = [out / dataset["data_root"] / e["label"] for e in dataset["training"] + dataset["validation"]]
    missing = [p.name for p in listed if not p.exists()]
    record_fault("SOLF rerun after removing input case 'ukbob_*' (glob characters)", survived=not missing,
                 data_lost=len(missing))
    assert not missing and len(listed) == 5
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(p.name for p in labels.iterdir())


def test_a_tampered_manifest_cannot_delete_files_outside_the_labels_folder(cohort, tmp_path):
    labels = tmp_path / "in"
    shutil.copytree(cohort, labels)
    out = tmp_path / "out"
    assert _solf(labels, out) == 0
    victim = tmp_path / "victim.nii.gz"
    victim.write_bytes(b"keep me")
    manifest = out / "features" / "cleaned_manifest.json"
    content = json.loads(manifest.read_text())
    content.update({"../../victim": "x", "../labelsTr/../../victim": "y"})
    manifest.write_text(json.dumps(content))
    assert _solf(labels, out) == 0
    assert victim.read_bytes() == b"keep me"
    record_input("untrusted names", "manifest naming '../../victim' as a stale output -> SOLF rerun",
                 handled("ignored; nothing outside labelsTr deleted"))


def test_a_planted_link_at_an_output_name_is_replaced_not_written_through(cohort, tmp_path):
    labels = tmp_path / "in"
    shutil.copytree(cohort, labels)
    out = tmp_path / "out"
    (out / "labelsTr").mkdir(parents=True)
    target = tmp_path / "outside.txt"
    target.write_bytes(b"must not change")
    (out / "labelsTr" / "ukbob_0001.nii.gz").symlink_to(target)
    (out / "dataset.json").symlink_to(target)
    assert _solf(labels, out) == 0
    assert target.read_bytes() == b"must not change"
    assert not (out / "labelsTr" / "ukbob_0001.nii.gz").is_symlink() and not (out / "dataset.json").is_symlink()
    record_input("untrusted names", "symlinks planted at SOLF output names -> SOLF",
                 handled("links replaced atomically; their targets untouched"))
