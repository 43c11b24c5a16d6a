"""SOLF acceptance: detection of injected label errors on a synthetic UKBOB cohort.

The cohort (80 phantoms, 64×64×80, phantom seed 7) differs from the cohorts the default
thresholds were chosen on (40 phantoms each of seeds 0-3). Errors of known position are injected
into a minority of the scans (30 of 80, three errors each, every kind 18 times; see
:mod:`swinbob.solf.inject`), then the full pipeline runs on the clean and on the corrupted
cohort. Definitions:

* an injected error is *detected* when every organ it corrupted on purpose (both organs of a
  swapped pair) is rejected or cleaned with at least one reason that matches its kind
  (``inject.MATCHING_REASONS``, e.g. ``wrong_side``/``misplaced`` for a swap);
* a flag (organ rejected or cleaned) is *correct* when the injection changed that organ's voxels
  in that scan (the organ itself, or a neighbour it grew or moved into); precision is correct
  flags over all flags in the corrupted cohort;
* the *clean false-rejection rate* is rejected organs over all organs of the clean cohort.

Requirements: detection >= 90 %, precision >= 90 %, clean false rejections <= 2 %.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from swinbob.files import write_nifti
from swinbob.data.phantoms import ukbob_case
from swinbob.solf.inject import KINDS, MATCHING_REASONS, Injection, inject
from swinbob.solf.cli import organ_filtering_entry

NUM_CASES, INJECTED_CASES, ERRORS_PER_CASE = 80, 30, 3
PHANTOM_SEED, SHAPE = 7, (64, 64, 80)


def _write_cohorts(root: Path) -> list[Injection]:
    rng = np.random.default_rng(2025)
    injections: list[Injection] = []
    for index in range(NUM_CASES):
        case = ukbob_case(index, seed=PHANTOM_SEED, shape=SHAPE)
        write_nifti(root / "clean" / f"{case.case_id}.nii.gz", case.label, case.affine)
        label = case.label
        if index < INJECTED_CASES:
            protected: frozenset[int] = frozenset()
            for error in range(ERRORS_PER_CASE):
                kind = KINDS[(index * ERRORS_PER_CASE + error) % len(KINDS)]
                label, injection = inject(case.case_id, label, case.affine, kind, rng, protected)
                injections.append(injection)
                protected |= frozenset(injection.primary)
        write_nifti(root / "corrupted" / f"{case.case_id}.nii.gz", label, case.affine)
    return injections


def _decisions(labels: Path, out: Path) -> dict[tuple[str, int], tuple[str, set[str]]]:
    assert organ_filtering_entry(["--input_dir", str(labels), "--output_dir", str(out), "--workers", "1",
                                  "--no_figure", "--log_level", "WARNING"]) == 0
    with open(out / "report" / "decisions.csv", newline="") as handle:
        return {(row["case_id"], int(row["label"])): (row["decision"], set(filter(None, row["reasons"].split(";"))))
                for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def rates(tmp_path_factory) -> dict[str, float]:
    root = tmp_path_factory.mktemp("solf_detection")
    injections = _write_cohorts(root)
    clean = _decisions(root / "clean", root / "clean_out")
    corrupted = _decisions(root / "corrupted", root / "corrupted_out")

    def detected(injection: Injection) -> bool:
        verdicts = [corrupted.get((injection.case_id, organ), ("absent", set())) for organ in injection.primary]
        return all(d != "kept" and d != "absent" and r & MATCHING_REASONS[injection.kind] for d, r in verdicts)

    hits = Counter(i.kind for i in injections if detected(i))
    touched = {(i.case_id, organ) for i in injections for organ in i.touched}
    flagged = [key for key, (decision, _) in corrupted.items() if decision != "kept"]
    result = {
        "detection": sum(hits.values()) / len(injections),
        "precision": sum(key in touched for key in flagged) / max(1, len(flagged)),
        "clean_false_rejection": sum(d == "rejected" for d, _ in clean.values()) / len(clean),
        **{f"detection_{kind}": hits[kind] / sum(i.kind == kind for i in injections) for kind in KINDS},
        "errors": len(injections), "flags": len(flagged), "clean_organs": len(clean),
    }
    print("\nSOLF detection on the test cohort:", {k: round(v, 4) for k, v in result.items()})
    return result


def test_detects_at_least_90_percent_of_injected_errors(rates):
    assert rates["errors"] == INJECTED_CASES * ERRORS_PER_CASE
    assert rates["detection"] >= 0.90


def test_flags_are_at_least_90_percent_precise(rates):
    assert rates["precision"] >= 0.90


def test_rejects_at_most_2_percent_of_a_clean_cohort(rates):
    assert rates["clean_organs"] >= 30 * NUM_CASES
    assert rates["clean_false_rejection"] <= 0.02
