"""The paper's SOLF rule (two of three features beyond the ε percentiles) on a hand-built table.

100 scans hold a liver and a muscle label. The muscle fills the rest of a 1000 mm³ body, so the
liver's normalised volume is its volume / 1000. Each liver feature takes the ranks 0..99 once
over the scans; with linear interpolation P2 = 1.98 and P98 = 97.02, so ranks 0, 1, 98 and 99
are out of range at ε = 2, and P1 = 0.99, P99 = 98.01 leave only ranks 0 and 99 out at ε = 1.
The extreme ranks are placed by hand:

    scan:            0    1    2    3    4    5    6
    volume rank:     0   99    1    -   98    -    -
    sphericity rank: 99   0    -    1    -   98    -
    eccentricity:    0    -   99   98    -    -    1

so at ε = 2 scans 0 (three features out), 1, 2, 3 (two) are flagged and 4, 5, 6 (one) are not;
at ε = 1 only scans 0 and 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from swinbob.files import write_nifti
from swinbob.solf.cases import make_task, measure_case
from swinbob.solf.decide import CLEANED, KEPT, REJECTED, decide
from swinbob.solf.features import SHAPE_COLUMNS
from swinbob.solf.cli import organ_filtering_entry
from swinbob.solf.rules import RulesError, load_rules
from swinbob.solf.store import FeatureTable, build_table

N, LIVER, MUSCLE = 100, 5, 66
EXTREMES = {  # feature: {scan: rank}
    "volume": {0: 0, 1: 99, 2: 1, 4: 98},
    "sphericity": {0: 99, 1: 0, 3: 1, 5: 98},
    "eccentricity": {0: 0, 2: 99, 3: 98, 6: 1},
}


def _ranks(extremes: dict[int, int]) -> np.ndarray:
    """Ranks 0..99 over the scans, the extreme ones where the table puts them."""
    ranks = np.full(N, -1)
    for scan, rank in extremes.items():
        ranks[scan] = rank
    middle = iter(sorted(set(range(N)) - set(extremes.values())))
    for scan in range(N):
        if ranks[scan] < 0:
            ranks[scan] = next(middle)
    return ranks


def hand_table(edits: dict[tuple[int, str], float] | None = None) -> FeatureTable:
    """The table of the module docstring (liver rows first, then muscle rows)."""
    volume = 100.0 + _ranks(EXTREMES["volume"])
    liver = {"volume_mm3": volume, "sphericity": 0.5 + 0.001 * _ranks(EXTREMES["sphericity"]),
             "eccentricity": 0.3 + 0.001 * _ranks(EXTREMES["eccentricity"])}
    muscle = {"volume_mm3": 1000.0 - volume, "sphericity": np.full(N, 0.2), "eccentricity": np.full(N, 0.9)}
    columns: dict[str, np.ndarray] = {"case_index": np.tile(np.arange(N), 2),
                                      "label": np.repeat([LIVER, MUSCLE], N)}
    for name in SHAPE_COLUMNS:
        columns[name] = np.ones(2 * N)
    for name in liver:
        columns[name] = np.concatenate([liver[name], muscle[name]])
    columns["voxel_count"] = columns["volume_mm3"].copy()
    columns["surface_mm2"] = np.pi ** (1 / 3) * (6 * columns["volume_mm3"]) ** (2 / 3) / columns["sphericity"]
    for name in ("surface_mm2", "sphericity", "eccentricity"):
        columns[f"main_{name}"] = columns[name].copy()
    for (scan, name), value in (edits or {}).items():
        columns[name][scan] = value
    return FeatureTable([f"case_{i:03d}" for i in range(N)], columns, [], list(SHAPE_COLUMNS))


def _flagged(decisions, verdict: str = REJECTED) -> set[int]:
    return {int(r) for r in np.flatnonzero(decisions.decision == verdict)}


def test_paper_rule_flags_exactly_the_organs_with_two_or_three_features_out_of_range():
    decisions = decide(hand_table(), load_rules(method="paper", max_rejected_fraction=1.0))
    assert _flagged(decisions) == {0, 1, 2, 3}  # liver rows 0..3; no muscle row (row >= 100)
    assert decisions.paper_reasons[0] == "paper_normalised_volume;paper_sphericity;paper_eccentricity"
    assert decisions.paper_reasons[1] == "paper_normalised_volume;paper_sphericity"
    assert decisions.paper_reasons[2] == "paper_normalised_volume;paper_eccentricity"
    assert decisions.paper_reasons[3] == "paper_sphericity;paper_eccentricity"
    assert all(decisions.paper_reasons[row] == "" for row in (4, 5, 6))
    assert all(r == "" for r in decisions.reasons)  # our rule's reasons are not mixed in
    assert not _flagged(decisions, CLEANED)


def test_epsilon_sets_the_percentiles():
    decisions = decide(hand_table(), load_rules(method="paper", epsilon=1.0, max_rejected_fraction=1.0))
    assert _flagged(decisions) == {0, 1}


def test_normalised_volume_uses_the_union_of_all_labels():
    # Scaling a whole scan (liver and muscle) keeps every normalised volume: scan 4 stays
    # at one feature out of range although its absolute volume is now by far the largest.
    table = hand_table()
    cols = table.columns
    cols["volume_mm3"][[4, N + 4]] *= 50
    assert _flagged(decide(table, load_rules(method="paper", max_rejected_fraction=1.0))) == {0, 1, 2, 3}
    # A body mask volume, when pass 1 measured one, replaces the union. With a 1000 mm³ body
    # everywhere, scan 4 (50x liver) and scan 5 (a 10 mm³ body) have the two largest normalised
    # volumes, which pushes scan 1 (rank 99 before) back into range: volume out {0, 2, 4, 5}.
    cols["body_volume_mm3"] = np.full(2 * N, 1000.0)
    cols["body_volume_mm3"][[5, N + 5]] = 10.0
    assert _flagged(decide(table, load_rules(method="paper", max_rejected_fraction=1.0))) == {0, 2, 3, 5}


def test_both_rejects_if_either_rejects_and_keeps_the_reasons_apart():
    # Ours: scan 10's liver is too small (rejected), scan 11's has a fragment (cleaned).
    table = hand_table({(10, "voxel_count"): 1.0, (11, "n_components"): 2.0, (11, "largest_share"): 0.9})
    ours = decide(table, load_rules(max_rejected_fraction=1.0))
    both = decide(table, load_rules(method="both", max_rejected_fraction=1.0))
    assert _flagged(ours) == {10} and _flagged(ours, CLEANED) == {11}
    assert _flagged(both) == {0, 1, 2, 3, 10} and _flagged(both, CLEANED) == {11}
    assert both.reasons[10] == "too_small" and both.paper_reasons[10] == ""
    assert both.reasons[0] == "" and both.paper_reasons[0].startswith("paper_")
    assert both.reasons[11] == "fragments" and both.decision[50] == KEPT


def test_too_small_a_population_is_not_tested_and_bad_settings_are_refused():
    decisions = decide(hand_table(), load_rules(method="paper", min_population=101, max_rejected_fraction=1.0))
    assert not _flagged(decisions)
    for bad in ({"method": "mine"}, {"epsilon": 0.0}, {"epsilon": 50.0}):
        with pytest.raises(RulesError):
            load_rules(**bad)


def test_body_masks_give_the_body_volume_and_a_mismatched_mask_fails_the_scan(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    label = np.zeros((10, 10, 10), np.uint8)
    label[2:5, 2:5, 2:5] = LIVER
    write_nifti(tmp_path / "labels" / "a.nii.gz", label, affine)
    write_nifti(tmp_path / "labels" / "b.nii.gz", label, affine)
    body = np.zeros((10, 10, 10), np.uint8)
    body[1:9, 1:9, 1:9] = 1
    write_nifti(tmp_path / "body" / "a.nii.gz", body, affine)
    write_nifti(tmp_path / "body" / "b.nii.gz", body[:9], affine)
    records = [measure_case(make_task(c, tmp_path / "labels" / f"{c}.nii.gz", None, set(), (), body_dir=tmp_path / "body"))
               for c in ("a", "b")]
    assert records[0]["body_volume_mm3"] == 8**3 * 12.0
    assert records[1]["status"] == "failed" and "body mask/label grid mismatch" in records[1]["reason"]
    table = build_table(records)
    assert table.columns["body_volume_mm3"].tolist() == [8**3 * 12.0]
    assert organ_filtering_entry(["--input_dir", str(tmp_path / "labels"), "--output_dir", str(tmp_path / "out"),
                                  "--body_dir", str(tmp_path / "nowhere")]) == 2


def test_body_volume_is_the_label_union_unless_a_positive_finite_body_mask_was_measured():
    from swinbob.solf.paper import body_volume, paper_features

    columns = {"case_index": np.array([0, 0, 1, 2, 2, 3, 4, 5]), "volume_mm3": np.array([10.0, 30, 7, 1, 2, 5, 6, 8]),
               "sphericity": np.full(8, 0.5), "eccentricity": np.full(8, 0.3)}
    table = FeatureTable([f"scan_{i}" for i in range(6)], columns, [], [])
    assert body_volume(table).tolist() == [40, 40, 7, 3, 3, 5, 6, 8]  # each scan's sum of label volumes, by hand
    columns["body_volume_mm3"] = np.array([100.0, 100, np.nan, 0, 0, -5, np.inf, 0.5])  # only 100 and 0.5 are usable
    assert body_volume(table).tolist() == [100, 100, 7, 3, 3, 5, 6, 0.5]
    assert paper_features(table)["normalised_volume"].tolist() == pytest.approx([0.1, 0.3, 1, 1 / 3, 2 / 3, 1, 1, 16])
