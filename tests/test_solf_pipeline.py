"""SOLF end to end on a phantom cohort: outputs, ignore value, resume, shards, idempotence, CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from swinbob.labels import IGNORE_LABEL, TOTALVIBE_LABELS
from swinbob.data.phantoms import write_cohort
from swinbob.solf import pipeline
from swinbob.solf.inject import fragment, shrink, swap
from swinbob.solf.outputs import split_cases
from swinbob.solf.cli import organ_filtering_entry
from swinbob.tasks import UKBOB_CHANNELS

REPO = Path(__file__).resolve().parents[1]
NUM_CASES = 24


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """24 small UKBOB phantoms; case 2 gets liver fragments, case 5 swapped kidneys, case 8 a shrunken spleen."""
    root = tmp_path_factory.mktemp("solf_cohort")
    write_cohort("ukbob", root, NUM_CASES, shape=(40, 40, 48), seed=3)
    for case, edit in (("ukbob_0002", "fragment"), ("ukbob_0005", "swap"), ("ukbob_0008", "shrink")):
        path = root / "labelsTr" / f"{case}.nii.gz"
        img = nib.load(path)
        label = np.asanyarray(img.dataobj)
        if edit == "fragment":
            label = fragment(label, 5, img.affine, np.random.default_rng(0))
        elif edit == "swap":
            label = swap(label, 3, 2)
        else:
            label = shrink(label, 1, keep_fraction=0.25)
        nib.save(nib.Nifti1Image(label, img.affine, img.header), path)
    return root


def _run(input_dir: Path, output_dir: Path, *extra: str) -> int:
    return organ_filtering_entry(["--input_dir", str(input_dir), "--output_dir", str(output_dir), "--workers", "1",
                                  "--no_figure", "--log_level", "WARNING", "--val_fraction", "0.25", *extra])


def _datalist_files(output_dir: Path) -> dict:
    """dataset.json with every path resolved through its data_root and made relative to ``output_dir``."""
    dataset = json.loads((output_dir / "dataset.json").read_text())
    root = output_dir / dataset.pop("data_root")

    def rel(path: str) -> str:
        return os.path.relpath(os.path.normpath(root / path), output_dir)

    for entry in dataset["training"] + dataset["validation"]:
        entry["label"] = rel(entry["label"])
        entry["image"] = [rel(p) for p in entry.get("image", [])]
    return dataset


def _snapshot(output_dir: Path) -> dict[str, bytes]:
    """Every output file except the resume state, by relative path (dataset.json by the files it names)."""
    files = {str(p.relative_to(output_dir)): p.read_bytes() for p in sorted(output_dir.rglob("*"))
             if p.is_file() and "features" not in p.relative_to(output_dir).parts[:1]}
    files["dataset.json"] = json.dumps(_datalist_files(output_dir), sort_keys=True).encode()
    return files


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> Path:
    """One uninterrupted, unsharded run with images: the outputs every other run must equal."""
    out = tmp_path_factory.mktemp("solf_reference")
    inputs_before = _digest(cohort / "labelsTr")
    assert _run(cohort / "labelsTr", out, "--image_dir", str(cohort / "imagesTr")) == 0
    assert _digest(cohort / "labelsTr") == inputs_before  # inputs are never modified
    return out


def _decisions(output_dir: Path) -> list[dict]:
    lines = (output_dir / "report" / "decisions.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:]]


def test_dataset_json_lists_channels_in_order_with_paths_relative_to_its_data_root(reference, cohort):
    dataset = json.loads((reference / "dataset.json").read_text())
    root = (reference / dataset["data_root"]).resolve()
    assert root == Path(os.path.commonpath([reference.resolve(), cohort.resolve()]))
    assert dataset["labels"] == {str(i): n for i, n in TOTALVIBE_LABELS.items()} and len(dataset["labels"]) == 73
    assert list(dataset["modality"].values()) == list(UKBOB_CHANNELS)
    assert dataset["numTraining"] == len(dataset["training"]) and dataset["numValidation"] == len(dataset["validation"])
    assert len(dataset["validation"]) == round(0.25 * (len(dataset["training"]) + len(dataset["validation"])))
    for entry in dataset["training"] + dataset["validation"]:
        case = Path(entry["label"]).name.removesuffix(".nii.gz")
        assert not any(part == ".." for p in [entry["label"], *entry["image"]] for part in Path(p).parts)
        assert (root / entry["label"]).resolve() == (reference / "labelsTr" / f"{case}.nii.gz").resolve()
        images = [(root / p).resolve() for p in entry["image"]]
        assert images == [(cohort / "imagesTr" / f"{case}_{c}.nii.gz").resolve() for c in UKBOB_CHANNELS]


def test_ignore_value_exactly_where_organs_were_rejected_or_fragments_removed(reference, cohort):
    """Rejected: the organ becomes 255; swapped pairs exchange their IDs; cleaned: every piece but the
    largest becomes 255."""
    decisions = _decisions(reference)
    verdicts = {(d["case_id"], int(d["label"])): (d["decision"], d["reasons"]) for d in decisions}
    assert {"kept", "cleaned", "rejected"} <= {v for v, _ in verdicts.values()}
    assert verdicts[("ukbob_0002", 5)][0] == "cleaned" and verdicts[("ukbob_0008", 1)][0] == "rejected"
    assert verdicts[("ukbob_0005", 2)] == verdicts[("ukbob_0005", 3)] == ("cleaned", "swapped")
    included = json.loads((reference / "dataset.json").read_text())
    cases = [Path(e["label"]).name.removesuffix(".nii.gz") for e in included["training"] + included["validation"]]
    ids = {name: i for i, name in TOTALVIBE_LABELS.items()}
    for case in cases:
        source = nib.load(cohort / "labelsTr" / f"{case}.nii.gz")
        cleaned = nib.load(reference / "labelsTr" / f"{case}.nii.gz")
        label, out = np.asanyarray(source.dataobj), np.asanyarray(cleaned.dataobj)
        expected = label.copy()
        for (c, organ), (verdict, reasons) in verdicts.items():
            if c != case or verdict == "kept":
                continue
            if verdict == "rejected":
                expected[label == organ] = IGNORE_LABEL
            elif reasons == "swapped":
                name = TOTALVIBE_LABELS[organ]
                partner = name.replace("_left", "_right") if name.endswith("_left") else name.replace("_right", "_left")
                expected[label == organ] = ids[partner]
            else:
                components, _ = ndimage.label(label == organ, structure=np.ones((3, 3, 3)))
                largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
                expected[(components > 0) & (components != largest)] = IGNORE_LABEL
        np.testing.assert_array_equal(out, expected, err_msg=case)
        assert np.allclose(cleaned.affine, source.affine) and cleaned.get_data_dtype().kind in "iu"
        assert cleaned.header["sform_code"] == source.header["sform_code"]


def test_scans_with_enough_rejected_organs_are_left_out_and_excluding_all_is_an_error(cohort, tmp_path, caplog):
    """--max_rejected_fraction 0 --min_rejected_to_exclude N leaves out exactly the scans with at least
    N rejected organs (counted here from decisions.csv); when that is every scan the run fails (exit 1)
    naming the organs rejected in most scans (these phantoms' adrenal glands are rejected in all)."""
    assert _run(cohort / "labelsTr", tmp_path / "three", "--max_rejected_fraction", "0", "--min_rejected_to_exclude", "3") == 0
    content = json.loads((tmp_path / "three" / "dataset.json").read_text())
    kept = {Path(e["label"]).name.removesuffix(".nii.gz") for e in content["training"] + content["validation"]}
    counts = Counter(d["case_id"] for d in _decisions(tmp_path / "three") if d["decision"] == "rejected")
    assert kept == {f"ukbob_{i:04d}" for i in range(NUM_CASES)} - {c for c, n in counts.items() if n >= 3}
    assert "ukbob_0008" not in kept and 0 < len(kept) < NUM_CASES  # the shrunken spleen's scan is left out
    with caplog.at_level(logging.ERROR, logger="swinbob"):
        assert _run(cohort / "labelsTr", tmp_path / "all", "--max_rejected_fraction", "0", "--min_rejected_to_exclude", "1") == 1
    assert "every scan was excluded (--max_rejected_fraction 0, --min_rejected_to_exclude 1)" in caplog.text
    assert "rejected in most scans: adrenal_gland_left, adrenal_gland_right" in caplog.text


def test_reports_are_consistent(reference):
    summary = json.loads((reference / "report" / "summary.json").read_text())
    decisions = _decisions(reference)
    assert summary["organs"]["present"] == len(decisions)
    assert summary["organs"]["rejected"] == sum(d["decision"] == "rejected" for d in decisions)
    liver = summary["per_organ"]["liver"]
    assert liver["present"] == NUM_CASES and liver["cleaned"] >= 1 and 0 <= liver["retention"] <= 1
    features = (reference / "report" / "features.csv").read_text().splitlines()
    assert len(features) - 1 == len(decisions) and "mean_water" in features[0]
    assert (reference / "report" / "failures.csv").read_text() == "case_id,stage,reason\n"


def test_rerun_is_idempotent_and_rewrites_nothing(reference, cohort):
    before = _snapshot(reference)
    mtimes = {p: p.stat().st_mtime_ns for p in (reference / "labelsTr").iterdir()}
    assert _run(cohort / "labelsTr", reference, "--image_dir", str(cohort / "imagesTr")) == 0
    assert _snapshot(reference) == before
    assert {p: p.stat().st_mtime_ns for p in (reference / "labelsTr").iterdir()} == mtimes


def test_overwrite_measures_and_writes_everything_again_with_equal_results(reference, cohort, tmp_path):
    out = tmp_path  # as deep as the reference, so relative image paths are the same
    shutil.copytree(reference, out, dirs_exist_ok=True)
    assert _run(cohort / "labelsTr", out, "--image_dir", str(cohort / "imagesTr"), "--overwrite") == 0
    log = out / "features" / "shard-00000-of-00001.jsonl"
    assert len(log.read_text().splitlines()) == NUM_CASES  # the old log was replaced, not appended to
    assert _snapshot(out) == _snapshot(reference)


def test_resume_after_max_scans_a_crash_and_a_torn_line_gives_the_same_outputs(reference, cohort, tmp_path, monkeypatch):
    images = ("--image_dir", str(cohort / "imagesTr"))
    assert _run(cohort / "labelsTr", tmp_path, *images, "--max_scans", "5") == 0
    assert not (tmp_path / "dataset.json").exists()
    calls = []

    def crash_on_fourth(task):
        calls.append(task.case_id)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return pipeline.measure_case.__wrapped__(task)
    crash_on_fourth.__wrapped__ = pipeline.measure_case
    monkeypatch.setattr(pipeline, "measure_case", crash_on_fourth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(cohort / "labelsTr", tmp_path, *images)
    monkeypatch.undo()
    log = tmp_path / "features" / "shard-00000-of-00001.jsonl"
    with open(log, "ab") as handle:
        handle.write(b'{"case_id": "ukbob_0023", "status": "o')  # a write cut short by a kill
    assert _run(cohort / "labelsTr", tmp_path, *images) == 0
    assert len(log.read_text().splitlines()) == NUM_CASES  # 5 + 3 + 16: nothing measured twice
    assert _snapshot(tmp_path) == _snapshot(reference)


def test_shards_then_merge_equal_one_run(reference, cohort, tmp_path):
    images = ("--image_dir", str(cohort / "imagesTr"))
    for shard in range(3):
        workers = ("--workers", "2") if shard == 1 else ()
        assert _run(cohort / "labelsTr", tmp_path, *images, "--stage", "features", "--num_shards", "3",
                    "--shard_id", str(shard), *workers) == 0
        if shard == 0:  # deciding before every shard is measured is refused
            assert _run(cohort / "labelsTr", tmp_path, *images, "--stage", "decide") == 2
    assert _run(cohort / "labelsTr", tmp_path, *images, "--merge") == 0
    assert (tmp_path / "report" / "features.csv").read_bytes() == (reference / "report" / "features.csv").read_bytes()
    assert _run(cohort / "labelsTr", tmp_path, *images, "--stage", "decide") == 0
    assert _snapshot(tmp_path) == _snapshot(reference)


def test_nnunet_image_names_are_matched_in_channel_order(reference, cohort, tmp_path):
    nnunet = tmp_path / "images"
    nnunet.mkdir()
    for case in range(NUM_CASES):
        for index, channel in enumerate(UKBOB_CHANNELS):
            os.link(cohort / "imagesTr" / f"ukbob_{case:04d}_{channel}.nii.gz", nnunet / f"ukbob_{case:04d}_{index:04d}.nii.gz")
    assert _run(cohort / "labelsTr", tmp_path / "out", "--image_dir", str(nnunet)) == 0
    dataset = _datalist_files(tmp_path / "out")
    first = dataset["training"][0]
    case = Path(first["label"]).name.removesuffix(".nii.gz")
    assert first["image"] == [f"../images/{case}_{i:04d}.nii.gz" for i in range(4)]
    assert (tmp_path / "out" / "report" / "features.csv").read_bytes() == (reference / "report" / "features.csv").read_bytes()


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)], ids=["rerun", "overwrite"])
def test_excluding_scans_removes_them_and_their_stale_outputs(reference, cohort, tmp_path, overwrite):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    assert _run(cohort / "labelsTr", out, "--image_dir", str(cohort / "imagesTr"), "--max_rejected_fraction", "0",
                "--min_rejected_to_exclude", "3", *overwrite) == 0  # 1 would leave none: adrenal glands are rejected in every phantom
    counts = Counter(d["case_id"] for d in _decisions(out) if d["decision"] == "rejected")
    rejected_cases = {case for case, n in counts.items() if n >= 3}
    dataset = json.loads((out / "dataset.json").read_text())
    listed = {Path(e["label"]).name.removesuffix(".nii.gz") for e in dataset["training"] + dataset["validation"]}
    assert rejected_cases and not listed & rejected_cases and len(listed) == NUM_CASES - len(rejected_cases)
    assert {p.name.removesuffix(".nii.gz") for p in (out / "labelsTr").iterdir()} == listed
    assert json.loads((out / "report" / "summary.json").read_text())["scans"]["excluded"] == len(rejected_cases)


def test_split_is_deterministic_and_stable_when_cases_are_added():
    cases = [f"c{i:03d}" for i in range(200)]
    train, validation = split_cases(cases, 0.1, seed=1)
    assert (train, validation) == split_cases(list(reversed(cases)), 0.1, seed=1) and len(validation) == 20
    assert split_cases(cases, 0.1, seed=2)[1] != validation
    _, more = split_cases(cases + [f"d{i:03d}" for i in range(20)], 0.1, seed=1)
    assert len(set(validation) & set(more)) >= 15  # adding cases moves few across the split


def test_the_script_runs_from_the_repository_root_and_from_ukbob(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    root = subprocess.run([sys.executable, "UKBOB/filtering/organ_filtering.py", "--dump_rules"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert root.returncode == 0 and json.loads(root.stdout)["organs"]["IVD"]["max_components"] == 25
    ukbob = subprocess.run([sys.executable, "filtering/organ_filtering.py", "--input_dir", str(tmp_path / "none")],
                           cwd=REPO / "UKBOB", env=env, capture_output=True, text=True, timeout=120)
    assert ukbob.returncode == 2 and "does not exist" in ukbob.stderr


def test_defaults_read_data_labels_and_write_data_cleaned(cohort, tmp_path):
    labels = tmp_path / "data" / "labels"
    labels.mkdir(parents=True)
    for case in range(3):
        os.link(cohort / "labelsTr" / f"ukbob_{case:04d}.nii.gz", labels / f"ukbob_{case:04d}.nii.gz")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(REPO / "UKBOB" / "filtering" / "organ_filtering.py"), "--workers", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "cleaned" / "dataset.json").is_file()
    assert (tmp_path / "data" / "cleaned" / "report" / "solf_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
