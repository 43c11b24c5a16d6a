"""SOLF pass 2 on small hand-made cohorts: rules, population outliers, left/right in RAS."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from swinbob.labels import TOTALVIBE_LABELS, ids_by_name
from swinbob.solf.decide import CLEANED, KEPT, REJECTED, decide
from swinbob.solf.features import measure_organs
from swinbob.solf.rules import OUTLIER_FEATURES, apply_overrides, default_rules
from swinbob.solf.store import build_table

ID = ids_by_name(TOTALVIBE_LABELS)
# Stored LAS: the first array axis runs towards the subject's LEFT (world x = 40 - 2 i), so index
# order and world order disagree and a sign error in the left/right test would show.
LAS = np.array([[-2.0, 0, 0, 40], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
ORGANS = {  # name: (i range, j range, k range), right-sided organs at small i
    "kidney_right": ((5, 10), (6, 11), (4, 10)),
    "kidney_left": ((30, 35), (6, 11), (4, 10)),
    "liver": ((6, 15), (11, 18), (13, 20)),
    "spleen": ((27, 33), (11, 16), (13, 19)),
}


def _scan(rng: np.random.Generator, edit=None) -> np.ndarray:
    label = np.zeros((40, 24, 24), np.uint8)
    label[2:38, 2:22, 2:22] = ID["muscle"]
    for name, ranges in ORGANS.items():
        box = tuple(slice(a + rng.integers(0, 2), b + rng.integers(0, 2)) for a, b in ranges)
        label[box] = ID[name]
    for piece in range(5):
        label[6 + 6 * piece: 8 + 6 * piece, 19:21, 19:21] = ID["costal_cartilages"]
    if edit is not None:
        edit(label)
    return label


def _decide(edits: dict[int, object], n: int = 24, overrides: dict | None = None):
    rng = np.random.default_rng(0)
    records = [{"case_id": f"case_{i:02d}", "status": "ok", "fingerprint": "-",
                "organs": measure_organs(_scan(rng, edits.get(i)), LAS)} for i in range(n)]
    table = build_table(records)
    rules = apply_overrides(default_rules(), overrides or {})
    decisions = decide(table, rules)
    rows = {(table.case_ids[c], TOTALVIBE_LABELS[label]): r for r, (c, label) in
            enumerate(zip(table.columns["case_index"], table.columns["label"]))}
    return table, decisions, rows


def _verdict(decisions, rows, case: int, organ: str) -> tuple[str, str]:
    row = rows[(f"case_{case:02d}", organ)]
    return str(decisions.decision[row]), decisions.reasons[row]


def _swap_kidneys(label):
    right, left = label == ID["kidney_right"], label == ID["kidney_left"]
    label[right], label[left] = ID["kidney_left"], ID["kidney_right"]


def test_clean_cohort_keeps_everything_and_right_means_larger_world_x():
    assert nib.aff2axcodes(LAS) == ("L", "A", "S")
    table, decisions, rows = _decide({})
    assert set(decisions.decision.tolist()) == {KEPT}
    x = dict(zip(table.columns["label"][:8].tolist(), table.columns["centroid_x"][:8].tolist()))
    assert x[ID["kidney_right"]] > 0 > x[ID["kidney_left"]]  # RAS+: +x is the subject's right


def test_swapped_left_right_pair_is_repaired_by_default_and_rejected_without_repair():
    _, decisions, rows = _decide({3: _swap_kidneys})
    for organ in ("kidney_right", "kidney_left"):
        assert _verdict(decisions, rows, 3, organ) == (CLEANED, "swapped")
        assert decisions.swapped[rows[("case_03", organ)]]
    assert _verdict(decisions, rows, 4, "kidney_left")[0] == KEPT
    assert decisions.swapped.sum() == 2
    _, decisions, rows = _decide({3: _swap_kidneys}, overrides={"settings": {"repair_swaps": False}})
    for organ in ("kidney_right", "kidney_left"):
        verdict, reasons = _verdict(decisions, rows, 3, organ)
        assert verdict == REJECTED and "wrong_side" in reasons.split(";") and "swapped" not in reasons
    assert not decisions.swapped.any()


def test_swapped_pair_with_another_fault_is_rejected_not_repaired():
    """An exchange only repairs names: a swapped pair whose one kidney is also far too small stays rejected."""
    def swap_and_shrink(label):
        _swap_kidneys(label)
        shrunk = label == ID["kidney_left"]
        shrunk[:, :, 5] = False  # one slice of six left
        label[shrunk] = 0

    _, decisions, rows = _decide({3: swap_and_shrink})
    assert not decisions.swapped.any()
    for organ in ("kidney_right", "kidney_left"):
        assert _verdict(decisions, rows, 3, organ)[0] == REJECTED


@pytest.mark.parametrize("moved, partner, x_slab", [
    ("kidney_right", "kidney_left", slice(33, 37)),  # to the left of the left kidney
    ("kidney_left", "kidney_right", slice(3, 7)),  # to the right of the right kidney
])
def test_organ_moved_across_the_midline_blames_only_itself(moved, partner, x_slab):
    def move(label):
        label[label == ID[moved]] = ID["muscle"]
        label[x_slab, 6:11, 12:17] = ID[moved]
    _, decisions, rows = _decide({5: move})
    verdict, reasons = _verdict(decisions, rows, 5, moved)
    assert verdict == REJECTED and {"wrong_side", "misplaced"} <= set(reasons.split(";"))
    assert _verdict(decisions, rows, 5, partner)[0] == KEPT


def test_small_fragment_is_cleaned_but_an_even_split_is_rejected():
    def add_island(label):
        label[20, 3, 3] = ID["liver"]

    def split_spleen(label):
        label[label == ID["spleen"]] = ID["muscle"]
        label[27:30, 11:15, 13:19] = ID["spleen"]
        label[31:34, 11:15, 13:19] = ID["spleen"]
    _, decisions, rows = _decide({1: add_island, 2: split_spleen})
    verdict, reasons = _verdict(decisions, rows, 1, "liver")
    assert verdict == CLEANED and reasons == "fragments"
    assert decisions.keep_components[rows[("case_01", "liver")]] == 1
    verdict, reasons = _verdict(decisions, rows, 2, "spleen")
    assert verdict == REJECTED and "fragmented" in reasons


def test_multi_part_organs_follow_their_component_range():
    def two_cartilages(label):
        label[label == ID["costal_cartilages"]] = ID["muscle"]
        label[6:8, 19:21, 19:21] = label[20:22, 19:21, 19:21] = ID["costal_cartilages"]
    _, decisions, rows = _decide({6: two_cartilages})
    assert _verdict(decisions, rows, 0, "costal_cartilages")[0] == KEPT  # 5 pieces expected (4-30)
    verdict, reasons = _verdict(decisions, rows, 6, "costal_cartilages")
    assert verdict == REJECTED and "too_few_components" in reasons


def test_size_outliers_need_a_population():
    def shrink_liver(label):
        label[label == ID["liver"]] = ID["muscle"]
        label[8:10, 12:14, 14:16] = ID["liver"]  # 8 voxels instead of ~400
    _, decisions, rows = _decide({7: shrink_liver}, overrides={"default": {"min_voxels": 2}})
    verdict, reasons = _verdict(decisions, rows, 7, "liver")
    assert verdict == REJECTED and "outlier_log_volume" in reasons
    _, decisions, rows = _decide({7: shrink_liver}, n=12, overrides={"default": {"min_voxels": 2}})
    assert _verdict(decisions, rows, 7, "liver")[0] == KEPT  # 12 scans < min_population 20


def test_unused_label_and_scan_exclusion():
    def unused(label):
        label[20, 20, 5] = ID["unused"]
    table, decisions, rows = _decide({8: unused, 9: _swap_kidneys},  # the swap rejected, not repaired
                                     overrides={"settings": {"max_rejected_fraction": 0.2, "repair_swaps": False}})
    assert _verdict(decisions, rows, 8, "unused") == (REJECTED, "unexpected_label;too_small")
    excluded = {table.case_ids[i] for i in np.flatnonzero(decisions.scan_excluded)}
    assert excluded == {"case_09"}  # 2 of 6 organs rejected > 20 %; case 8: 1 of 7 < 20 %
    assert decisions.scan_rejected_fraction[9] == pytest.approx(2 / 6)


def test_swapped_pair_below_the_population_size_blames_both_sides():
    """With too few scans for lateral z-scores neither partner looks atypical: both are blamed."""
    _, decisions, rows = _decide({3: _swap_kidneys}, n=12, overrides={"settings": {"repair_swaps": False}})
    for organ in ("kidney_right", "kidney_left"):
        assert _verdict(decisions, rows, 3, organ) == (REJECTED, "wrong_side")
    _, decisions, rows = _decide({3: _swap_kidneys}, n=12)  # blamed on both: repairable
    for organ in ("kidney_right", "kidney_left"):
        assert _verdict(decisions, rows, 3, organ) == (CLEANED, "swapped")
    assert _verdict(decisions, rows, 4, "kidney_right")[0] == KEPT


# Realistic label errors that the project's injector (solf/inject.py) does not make.

def test_partial_leakage_into_a_neighbour_rejects_both_organs():
    def liver_leaks_into_right_kidney(label):
        region = label[5:16, 8:19, 6:15]  # the liver label spreads over the kidney and the muscle between
        region[np.isin(region, [ID["muscle"], ID["kidney_right"]])] = ID["liver"]
    _, decisions, rows = _decide({3: liver_leaks_into_right_kidney})
    verdict, reasons = _verdict(decisions, rows, 3, "liver")
    assert verdict == REJECTED and "outlier_log_volume" in reasons  # about 2.5x its usual volume
    assert _verdict(decisions, rows, 3, "kidney_right") == (REJECTED, "outlier_sphericity")  # what is left of it
    assert _verdict(decisions, rows, 3, "spleen")[0] == KEPT


def test_missing_slices_split_an_organ_and_reject_it():
    def drop_two_liver_slices(label):
        slab = label[:, :, 15:17]
        slab[slab == ID["liver"]] = ID["muscle"]
    _, decisions, rows = _decide({3: drop_two_liver_slices})
    verdict, reasons = _verdict(decisions, rows, 3, "liver")
    assert verdict == REJECTED and {"fragments", "outlier_log_volume"} <= set(reasons.split(";"))


def _swap(label, a: str, b: str) -> None:
    mask_a, mask_b = label == ID[a], label == ID[b]
    label[mask_a], label[mask_b] = ID[b], ID[a]


def test_adjacent_organ_swap_rejects_the_organ_of_the_wrong_size():
    _, decisions, rows = _decide({3: lambda label: _swap(label, "liver", "kidney_right")})
    assert _verdict(decisions, rows, 3, "liver") == (REJECTED, "outlier_log_volume")


@pytest.mark.xfail(strict=True, reason="known miss: the liver-sized 'kidney_right' is within 4.5 robust z of "
                   "the kidney population in volume and position on this cohort; only the liver is rejected")
def test_adjacent_organ_swap_rejects_both_organs():
    _, decisions, rows = _decide({3: lambda label: _swap(label, "liver", "kidney_right")})
    assert _verdict(decisions, rows, 3, "kidney_right")[0] == REJECTED


@pytest.mark.xfail(strict=True, reason="known miss: spleen and left kidney have similar volumes here and their "
                   "centroids are under 20 mm apart per axis (4.5 z at the 3 mm MAD floor), so a swap is kept")
def test_swap_of_similar_adjacent_organs_is_detected():
    _, decisions, rows = _decide({3: lambda label: _swap(label, "spleen", "kidney_left")})
    assert REJECTED in {_verdict(decisions, rows, 3, o)[0] for o in ("spleen", "kidney_left")}


def test_a_scan_at_another_table_position_keeps_every_organ():
    """Positions are judged relative to the body: a whole scan translated in world space (another
    table position) is as plausible as the others."""
    rng = np.random.default_rng(0)
    shifted = LAS.copy()
    shifted[:3, 3] += (60.0, -45.0, 80.0)  # mm
    records = [{"case_id": f"case_{i:02d}", "status": "ok", "fingerprint": "-",
                "organs": measure_organs(_scan(rng), shifted if i == 3 else LAS)} for i in range(24)]
    table = build_table(records)
    decisions = decide(table, default_rules())
    assert set(decisions.decision.tolist()) == {KEPT}
    moved = table.columns["case_index"] == 3
    assert np.all(np.abs(decisions.zscores["position"][moved]) < 1.0)


def test_an_organ_whose_partner_is_missing_is_not_on_the_wrong_side():
    def remove_right_kidney(label):
        label[label == ID["kidney_right"]] = ID["muscle"]
    _, decisions, rows = _decide({0: remove_right_kidney, 23: remove_right_kidney})
    for case in (0, 23):  # also the table's first and last scans
        assert ("case_%02d" % case, "kidney_right") not in rows
        assert "wrong_side" not in _verdict(decisions, rows, case, "kidney_left")[1]


# --- Boundaries and bookkeeping of pass 2 on hand-written feature tables (mutation survivors) ---
# Each test below pins one rule at its edge: "strictly above the threshold", "a label seen exactly
# min_count times", "a scan with no organ", "the first row of the table". Features are written
# directly, so the value at the edge is exact.

def _table(rows: list[tuple], n_cases: int):
    """FeatureTable with one row per (case, organ name, {feature: value}) and plain defaults."""
    from swinbob.solf.store import FeatureTable
    defaults = {"volume_mm3": 1000.0, "largest_share": 1.0, "surface_mm2": 600.0, "sphericity": 0.8,
                "eccentricity": 0.3, "centroid_x": 0.0, "centroid_y": 0.0, "centroid_z": 0.0,
                "voxel_count": 125, "n_components": 1}
    columns = {"case_index": np.array([r[0] for r in rows], np.int64),
               "label": np.array([ID[r[1]] for r in rows], np.int64)}
    for name, default in defaults.items():
        values = [dict(defaults, **(r[2] if len(r) > 2 else {}))[name] for r in rows]
        columns[name] = np.array(values, np.float64)
        if name not in ("volume_mm3", "largest_share", "voxel_count", "n_components"):
            main = [(r[2] if len(r) > 2 else {}).get(f"main_{name}", v) for r, v in zip(rows, values)]
            columns[f"main_{name}"] = np.array(main, np.float64)
    columns["voxel_count"] = columns["voxel_count"].astype(np.int64)
    columns["n_components"] = columns["n_components"].astype(np.int64)
    return FeatureTable([f"case_{i:02d}" for i in range(n_cases)], columns, [], [])


def test_population_statistics_need_exactly_min_count_finite_values():
    from swinbob.solf.decide import population_stats
    from swinbob.solf.labelsets import LABEL_SLOTS
    values, labels = np.array([1.0, 2.0, 4.0, np.nan, 7.0]), np.array([3, 3, 3, 3, 5])
    population = population_stats(values, labels, floor=0.1, min_count=3)
    assert population.median[3] == 2.0 and population.scale[3] == 1.0  # NaN ignored, 3 values = min_count
    assert np.isnan(population.median[5])  # one value only
    assert population.count.shape == (LABEL_SLOTS,) and population.count[3] == 4 and population.count[5] == 1
    assert np.isnan(population_stats(values, labels, floor=0.1, min_count=4).median[3])


def _wrong_side(rows, lateral_z=None, n_cases=1):
    from swinbob.solf.decide import wrong_side_rows
    table = _table(rows, n_cases)
    z = np.zeros(len(rows)) if lateral_z is None else np.asarray(lateral_z, np.float64)
    return wrong_side_rows(table, table.columns["centroid_x"], z, TOTALVIBE_LABELS).tolist()


def test_wrong_side_pairs_at_equal_centroids_and_in_the_first_table_row():
    # right must have a strictly larger world x: equal centroids are inverted (left partner in row 0)
    assert _wrong_side([(0, "kidney_left", {"centroid_x": 5.0}), (0, "kidney_right", {"centroid_x": 5.0})]) == [True, True]
    # right partner in row 0
    assert _wrong_side([(0, "kidney_right", {"centroid_x": -9.0}), (0, "kidney_left", {"centroid_x": 9.0})]) == [True, True]
    assert _wrong_side([(0, "kidney_right", {"centroid_x": 9.0}), (0, "kidney_left", {"centroid_x": -9.0})]) == [False, False]


def test_wrong_side_blame_at_a_lateral_z_of_exactly_two():
    rows = [(0, "liver"), (0, "kidney_left", {"centroid_x": 9.0}), (0, "kidney_right", {"centroid_x": -9.0})]
    assert _wrong_side(rows, [0.0, 2.0, 0.0]) == [False, True, False]  # |z| >= 2: only the left one
    assert _wrong_side(rows, [0.0, 0.0, -2.0]) == [False, False, True]
    assert _wrong_side(rows, [0.0, 1.99, 0.0]) == [False, True, True]  # neither atypical: both


def test_wrong_side_needs_both_partners_in_the_scan():
    # the right kidney is missing; the last row of the table (another scan) must not stand in for it
    rows = [(0, "kidney_left", {"centroid_x": 9.0}), (1, "liver", {"centroid_x": -100.0})]
    assert _wrong_side(rows, n_cases=2) == [False, False]


def test_flags_are_strictly_above_their_thresholds():
    from swinbob.solf.decide import _flags
    rules = default_rules()
    s = rules.settings
    min_voxels = rules.organs[ID["liver"]].min_voxels
    table = _table([(0, "liver", {"voxel_count": min_voxels}), (0, "spleen", {"voxel_count": min_voxels - 1})], 1)
    at = {f: np.array([s.mad_threshold, s.mad_threshold + 1e-9]) for f in OUTLIER_FEATURES}
    at["position"] = np.array([s.position_threshold, s.position_threshold + 1e-9])
    at["rel_x"] = at["rel_y"] = at["rel_z"] = np.zeros(2)
    flags = _flags(table, rules, {"centroid_x": np.zeros(2)}, at)
    for reason in ("too_small", "misplaced", *(f"outlier_{f}" for f in OUTLIER_FEATURES if f != "log_volume_share")):
        assert flags[reason].tolist() == [False, True], reason


def test_scan_shares_an_empty_last_scan_and_the_returned_bookkeeping():
    from swinbob.solf.labelsets import LABEL_SLOTS
    rows = [(0, "liver"), (0, "spleen"), (0, "kidney_right", {"centroid_x": 9.0}), (0, "unused"),  # 1 of 4 rejected
            (1, "unused")]  # a scan with a single (rejected) organ; case 2 has no organ at all
    table = _table(rows, 3)
    decisions = decide(table, default_rules())
    assert decisions.decision.tolist() == [KEPT, KEPT, KEPT, REJECTED, REJECTED]
    assert decisions.scan_rejected_fraction.tolist() == [0.25, 1.0, 0.0]
    assert decisions.scan_excluded.tolist() == [False, True, False]  # exactly 0.25 is not above 0.25
    assert decisions.paper_reasons == [""] * 5  # method "ours": no paper reasons
    count = decisions.population["log_volume"].count
    assert count.shape == (LABEL_SLOTS,) and count[ID["unused"]] == 2 and count[ID["liver"]] == 1
    assert decisions.rules.labels == default_rules().labels


def test_a_label_without_a_rule_is_unexpected():
    from swinbob.solf.rules import RuleSet
    rules = default_rules()
    rules = RuleSet(rules.settings, {k: v for k, v in rules.organs.items() if k != ID["liver"]}, rules.labels)
    decisions = decide(_table([(0, "liver"), (0, "spleen")], 1), rules)
    assert decisions.decision.tolist() == [REJECTED, KEPT]
    assert decisions.reasons[0].split(";")[0] == "unexpected_label"


def test_paper_method_decides_by_the_paper_vote_alone():
    table = _table([(0, "liver"), (0, "unused"), (0, "spleen", {"n_components": 3, "largest_share": 0.9})], 1)
    decisions = decide(table, apply_overrides(default_rules(), {"settings": {"method": "paper"}}))
    # below the population size the paper's vote flags nothing; our rules are not applied
    assert decisions.decision.tolist() == [KEPT, KEPT, KEPT]
    assert decisions.reasons == ["", "", ""] and decisions.paper_reasons == ["", "", ""]


def test_single_piece_organs_are_described_by_their_largest_component():
    from swinbob.solf.decide import derived_features
    table = _table([(0, "liver", {"surface_mm2": 900.0, "main_surface_mm2": 600.0, "largest_share": 0.8,
                                  "n_components": 2, "centroid_x": 10.0, "main_centroid_x": 4.0})], 1)
    derived = derived_features(table, default_rules())
    assert derived["log_surface"][0] == pytest.approx(np.log(600.0))
    assert derived["log_volume"][0] == pytest.approx(np.log(800.0))
    assert derived["centroid_x"][0] == 4.0
