"""The real-MRI cohort and ``benchmarks/bench_recipe.py`` end to end on a tiny cohort (the same commands).

The cohort is checked against its own definition: hemispheres by MNI side, errors only where
``injections.json`` says, test labels intact. The benchmark runs every stage (cohort, SOLF ours and
paper, ``main.py`` training, ``test_etta.py`` scoring, fine-tuning from the cleaned model, the
adaptation ablation, the report) with a few steps, so that the path cannot rot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("nilearn", reason="the MNI152 template comes from the nilearn wheel (pip install '.[test]')")

from swinbob.data.mni_cohort import STRUCTURE_LABELS, load_template, make_subject, structure_labels  # noqa: E402
from swinbob.solf.brain_cohort import read_injections, write_cohort  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_recipe  # noqa: E402


def read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_subject_hemispheres_follow_the_mni_side() -> None:
    subject = make_subject(load_template(), seed=3)
    labels = structure_labels(subject)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    for name, value in {v: k for k, v in STRUCTURE_LABELS.items()}.items():
        if value:
            side = subject.mni_x[labels == value]
            assert (side > 0).all() if name.endswith("_right") else (side <= 0).all()
    # RAS grid: the left structures lie at smaller x indices than their right twins
    assert ndimage.center_of_mass(labels == 1)[0] < ndimage.center_of_mass(labels == 2)[0]
    assert ndimage.center_of_mass(labels == 3)[0] < ndimage.center_of_mass(labels == 4)[0]
    # grey and white matter together are the subject's tissue labels, nothing more
    np.testing.assert_array_equal(labels > 0, subject.tissue > 0)


def test_automatic_labels_differ_only_where_an_error_was_injected(tmp_path: Path) -> None:
    cohort = write_cohort(tmp_path / "c", train=6, test=1, seed=1, error_share=0.5)
    injections = read_injections(tmp_path / "c")
    assert len(injections) == 3 and len(set(cohort.corrupted)) == 3
    content = json.loads((tmp_path / "c" / "dataset.json").read_text())
    assert content["labels"] == {"background": 0, "gm_left": 1, "gm_right": 2, "wm_left": 3, "wm_right": 4}
    assert content["channel_names"] == {"0": "T1"} and len(content["training"]) == 6 and len(content["test"]) == 1
    by_case = {i.case_id: i for i in injections}
    for case in cohort.train:
        auto, intact = read(tmp_path / "c" / "labelsTr" / f"{case}.nii.gz"), read(tmp_path / "c" / "labelsTrue" / f"{case}.nii.gz")
        changed = auto != intact
        if case not in by_case:
            assert not changed.any()
            continue
        assert changed.any()
        values = set(np.unique(auto[changed])) | set(np.unique(intact[changed]))
        assert values - {0} <= set(by_case[case].touched)
        assert set(by_case[case].primary) <= set(by_case[case].touched)
    with pytest.raises(Exception, match="already there"):
        write_cohort(tmp_path / "c", train=2, test=1)


def test_a_systematic_error_goes_into_the_named_structure_only(tmp_path: Path) -> None:
    write_cohort(tmp_path / "c", train=4, test=1, seed=2, error_share=1.0, kinds=("shrink", "missing_slices"),
                 structures=("wm_right",))
    injections = read_injections(tmp_path / "c")
    assert len(injections) == 4 and {i.primary for i in injections} == {(4,)} and STRUCTURE_LABELS[4] == "wm_right"
    assert sorted(i.kind for i in injections) == ["missing_slices", "missing_slices", "shrink", "shrink"]
    with pytest.raises(Exception, match="unknown structure or error kind liver"):
        write_cohort(tmp_path / "d", train=2, test=1, structures=("liver",))
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_bench_recipe_runs_every_stage_on_a_tiny_cohort(tmp_path: Path) -> None:
    figure = tmp_path / "recipe.png"
    argv = ["all", "--work_dir", str(tmp_path / "w"), "--train_subjects", "3", "--test_subjects", "1",
            "--error_share", "0.67", "--seeds", "0", "--variants", "raw", "cleaned", "--steps", "1", "--per_epoch", "1",
            "--finetune_pool", "1", "--downstream_test", "1", "--labelled", "1", "--ft_steps", "1",
            "--curve_every", "1", "--curve_subjects", "1", "--workers", "1", "--figure", str(figure)]
    assert bench_recipe.main(argv) == 0
    work = tmp_path / "w"
    results = json.loads((work / "results.json").read_text())
    for method in ("ours", "paper"):
        scores = results["solf"][method]
        assert 0 <= scores["recall"] <= 1 and 0 <= scores["precision"] <= 1 and 0 <= scores["clean_flagged"] <= 1
    tally = results["solf"]["ours"]["supervision"]  # wrong voxels of the raw labels, counted here from the files
    cohort = work / "cohort"
    differ = sum(int(np.count_nonzero(nib.load(p).get_fdata() != nib.load(cohort / "labelsTrue" / p.name).get_fdata()))
                 for p in (cohort / "labelsTr").glob("*.nii.gz"))
    assert sum(t["raw_wrong"] for t in tally.values()) == differ > 0 and tally.get("none", {}).get("raw_wrong", 0) == 0
    assert set(results["claim1"]) >= {"raw", "cleaned"}
    assert all(0 <= d <= 1 for v in ("raw", "cleaned") for d in results["claim1"][v]["dice"])
    row = results["claim2"]["1"]
    assert {"swinbob", "scratch"} <= set(row) and row["swinbob"]["curve"][0][0] == 1
    assert set(results["claim3"]) == {"none", "ETTA", "flip", "flip + ETTA", "flip + selftrain"}
    assert figure.stat().st_size > 0
    # the fine-tuned model started from the cleaned claim-1 model (main.py's transfer log)
    assert "claim1_cleaned_s0/model_final.pt: loaded" in (work / "models" / "claim2_swinbob_n1.log").read_text()
