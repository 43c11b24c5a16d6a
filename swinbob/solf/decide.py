"""SOLF pass 2: keep, clean or reject every organ of every scan, with the reasons.

Three kinds of evidence, all vectorised over the whole (scan × organ) table:

* organ rules (:mod:`swinbob.solf.rules`): connected-component range, minimum size, labels that
  should not occur. A single-component organ with extra small components is *cleaned* (its
  fragments are dropped); one whose largest component holds at most ``min_largest_share`` is
  *rejected*, because then no component is clearly "the organ";
* population outliers per organ: robust z-scores ``0.6745 (x - median) / MAD`` of log-volume,
  log-surface, sphericity and eccentricity, and of the organ's position relative to the body
  (organ centroid minus the volume-weighted centroid of all labels of the scan, per world axis);
  skipped for organs seen in fewer than ``min_population`` scans;
* left/right plausibility in world coordinates. NIfTI world space is RAS+: +x points to the
  subject's **right** (nibabel, "Coordinate systems and affines"), so a ``*_right`` organ must
  have a larger centroid x than its ``*_left`` partner. When a pair is inverted, the blame goes
  to the partner(s) whose own lateral position is atypical (|z| >= 2), or to both if neither or
  both are: a swapped pair flags both organs, an organ moved across the midline only itself.
  A pair inverted as a whole with nothing else wrong with either partner (``swapped``, rule
  ``ours`` with ``repair_swaps``) is cleaned by exchanging its two labels instead of rejected:
  the outlines are right and the names crossed, so the repair loses no supervision;
* pieces (every connected component but the largest, see :mod:`swinbob.solf.features`). The
  body's midline is estimated per scan as the median over its left/right pairs of the midpoint of
  the two main bodies; a piece of a left or right structure whose centroid lies on the other side,
  beyond :data:`SIDE_MARGIN` of its main body's distance from the midline, is an island on the
  wrong side (``wrong_side_island``) and is cleaned, however many pieces the structure has. For
  ``learn_pieces`` organs (label sets other than TotalVibeSegmentator) the cohort's pieces of each
  organ define what natural extra pieces look like: natural pieces are small or close to the main
  body, so a piece is a fragment when the sum of its robust z-scores of size share and gap (each
  counted from 0 up) exceeds ``piece_threshold``; natural pieces are kept. Such
  an organ is cleaned of those pieces only (``fragments``), not of every piece beyond a count.

Any reject reason rejects the organ; otherwise a clean reason cleans it; otherwise it is kept. A
scan whose share of rejected organs exceeds ``max_rejected_fraction`` is excluded (if at least
``min_rejected_to_exclude`` of its organs are rejected).

``settings.method`` picks the rule: ``ours`` (the above), ``paper`` (the UKBOB paper's vote,
:mod:`swinbob.solf.paper`: flagged organs are rejected, nothing is cleaned) or ``both`` (rejected
if either rejects; our reasons in ``reasons``, the paper's in ``paper_reasons``, kept apart).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from swinbob.labels import side_pairs
from swinbob.solf.features import MAX_PIECES
from swinbob.solf.labelsets import LABEL_SLOTS, finite_values_by_label
from swinbob.solf.paper import paper_flags
from swinbob.solf.rules import OUTLIER_FEATURES, RuleSet, learn_component_rules
from swinbob.solf.store import FeatureTable

KEPT, CLEANED, REJECTED = "kept", "cleaned", "rejected"
MAD_TO_Z = 0.6745
"""Scales a MAD to the standard deviation of a normal distribution (Iglewicz & Hoaglin)."""
BLAME_Z = 2.0
"""Lateral |z| above which one partner of an inverted left/right pair is taken as the wrong one."""

SIDE_MARGIN = 0.5
"""A piece is on the wrong side when it lies beyond the midline by more than this share of its main
body's distance from the midline: pieces at the medial surface never count, nor does the tilt of
the true midline plane in a rotated head, which a single midline x per scan cannot follow."""
MIN_PIECE_SCANS = 3
"""Scans that must show pieces of an organ before its natural pieces are learned; below this
every extra piece of it is a fragment (its component-count rule applies)."""

REJECT_REASONS = ("unexpected_label", "too_small", "too_few_components", "fragmented", "wrong_side", "misplaced",
                  *(f"outlier_{f}" for f in OUTLIER_FEATURES))
CLEAN_REASONS = ("fragments", "wrong_side_island", "swapped")
PIECE_FEATURES = ("log_share", "gap_mm")
POSITION_AXES = ("x", "y", "z")


@dataclass
class Population:
    """Robust statistics of one feature per label (index = label ID; NaN where not computed)."""

    median: np.ndarray
    scale: np.ndarray
    count: np.ndarray


@dataclass
class Decisions:
    """Per-row decisions aligned with the rows of a :class:`FeatureTable`, plus scan verdicts."""

    decision: np.ndarray
    reasons: list[str]
    zscores: dict[str, np.ndarray]
    keep_components: np.ndarray
    """Components a cleaned row keeps (the largest ones); 0: no count limit, its dropped pieces
    (``pieces.drop``) are removed instead."""
    population: dict[str, Population]
    scan_rejected_fraction: np.ndarray
    scan_excluded: np.ndarray
    paper_reasons: list[str]
    rules: RuleSet
    """The rules applied, with component counts learned from the cohort (label names in ``rules.labels``)."""
    pieces: PieceVerdicts | None = None
    """What happens to each row of ``table.pieces`` when its organ is cleaned."""
    swapped: np.ndarray | None = None
    """Rows of left/right pairs repaired by exchanging their labels (``repair_swaps``)."""


@dataclass
class PieceVerdicts:
    """Per piece of ``table.pieces``: its organ's row, robust z-scores, and whether cleaning drops it.

    ``drop`` is set for pieces on the wrong side and for pieces of ``learn_pieces`` organs that are
    unlike the cohort's; ``population`` holds the learned statistics per feature of
    :data:`PIECE_FEATURES` (median NaN for organs whose pieces were not learned)."""

    row: np.ndarray
    wrong_side: np.ndarray
    unnatural: np.ndarray
    drop: np.ndarray
    zscores: dict[str, np.ndarray]
    population: dict[str, Population]
    midline_x: np.ndarray


def derived_features(table: FeatureTable, rules: RuleSet, by_pieces: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Features tested against the population: log sizes, shape, world centroid, position
    relative to the body. Single-piece organs, and rows whose pieces are judged one by one
    (``by_pieces``), are described by their largest component, so that debris is cleaned rather
    than making the organ look abnormal."""
    cols = table.columns
    single = _rule_arrays(rules, cols["label"])["max_components"] == 1
    if by_pieces is not None:
        single = single | by_pieces

    def pick(name: str) -> np.ndarray:
        return np.where(single, cols[f"main_{name}"], cols[name])

    volume = np.where(single, cols["volume_mm3"] * cols["largest_share"], cols["volume_mm3"])
    out = {
        "log_volume": np.log(volume),
        "log_surface": np.log(pick("surface_mm2")),
        "sphericity": pick("sphericity"),
        "eccentricity": pick("eccentricity"),
    }
    case = cols["case_index"]
    n_cases = len(table.case_ids)
    weight = np.bincount(case, weights=volume, minlength=n_cases)
    out["log_volume_share"] = np.log(volume / np.maximum(weight[case], 1e-12))
    for axis in POSITION_AXES:
        centroid = pick(f"centroid_{axis}")
        body = np.bincount(case, weights=volume * centroid, minlength=n_cases) / np.maximum(weight, 1e-12)
        out[f"centroid_{axis}"] = centroid
        out[f"rel_{axis}"] = centroid - body[case]
    return out


def population_stats(values: np.ndarray, labels: np.ndarray, floor: float, min_count: int) -> Population:
    """Median and floored MAD of ``values`` for each label seen at least ``min_count`` times."""
    median = np.full(LABEL_SLOTS, np.nan)
    scale = np.full(LABEL_SLOTS, np.nan)
    for label, x in finite_values_by_label(values, labels, min_count):
        median[label] = np.median(x)
        scale[label] = max(float(np.median(np.abs(x - median[label]))), floor)
    return Population(median, scale, np.bincount(labels, minlength=LABEL_SLOTS))


def robust_z(values: np.ndarray, labels: np.ndarray, population: Population) -> np.ndarray:
    """Robust z-score of each row against its label's population (NaN where none)."""
    return MAD_TO_Z * (values - population.median[labels]) / population.scale[labels]


def wrong_side_rows(table: FeatureTable, centroid_x: np.ndarray, lateral_z: np.ndarray,
                    labels: dict[int, str]) -> np.ndarray:
    """Rows of organs on the wrong side of their left/right partner (see module docstring);
    partners are found from the names of ``labels`` (:func:`swinbob.labels.side_pairs`)."""
    flagged = np.zeros(table.columns["label"].size, dtype=bool)
    x, z = centroid_x, np.nan_to_num(np.abs(lateral_z), nan=0.0)
    for rows_l, rows_r in _pair_rows(table, labels):
        inverted = x[rows_r] <= x[rows_l]
        blame_l, blame_r = z[rows_l] >= BLAME_Z, z[rows_r] >= BLAME_Z
        one_sided = blame_l != blame_r
        flagged[rows_l[inverted & (blame_l | ~one_sided)]] = True
        flagged[rows_r[inverted & (blame_r | ~one_sided)]] = True
    return flagged


def swapped_pair_rows(table: FeatureTable, flags: dict[str, np.ndarray], zscores: dict[str, np.ndarray],
                      rules: RuleSet) -> np.ndarray:
    """Rows of left/right pairs inverted as a whole, repairable by exchanging the two labels: both
    partners on the wrong side, neither with any other reject reason (shape, size, pieces) nor
    misplaced along y or z (only along x, which the swap explains)."""
    other = np.zeros(table.columns["label"].size, dtype=bool)
    for reason in REJECT_REASONS:
        if reason not in ("wrong_side", "misplaced"):
            other |= flags[reason]
    limit = rules.settings.position_threshold
    off_yz = (np.nan_to_num(np.abs(zscores["rel_y"])) > limit) | (np.nan_to_num(np.abs(zscores["rel_z"])) > limit)
    fine = flags["wrong_side"] & ~other & ~off_yz
    swapped = np.zeros_like(fine)
    for rows_l, rows_r in _pair_rows(table, rules.labels):
        pair = fine[rows_l] & fine[rows_r]
        swapped[rows_l[pair]] = swapped[rows_r[pair]] = True
    return swapped


def _row_index(table: FeatureTable) -> np.ndarray:
    """(scan, label) -> row of ``table`` (-1 where the scan has no such organ)."""
    cols = table.columns
    row_of = np.full((len(table.case_ids), LABEL_SLOTS), -1, dtype=np.int64)
    row_of[cols["case_index"], cols["label"]] = np.arange(cols["label"].size)
    return row_of


def _pair_rows(table: FeatureTable, labels: dict[int, str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per left/right pair of ``labels``: the rows of its left and right organ in the scans that have both."""
    row_of = _row_index(table)
    for left, right in side_pairs(labels):
        rows_l, rows_r = row_of[:, left], row_of[:, right]
        both = (rows_l >= 0) & (rows_r >= 0)
        yield rows_l[both], rows_r[both]


def scan_midlines(table: FeatureTable, labels: dict[int, str]) -> np.ndarray:
    """World x of each scan's body midline: median over its left/right pairs (both present, not
    inverted) of the midpoint of their main bodies; NaN for a scan without such a pair. A swapped
    pair has the same midpoint, so swaps do not move the estimate."""
    row_of = _row_index(table)
    x = table.columns["main_centroid_x"]
    midpoints = []
    for left, right in side_pairs(labels):
        rows_l, rows_r = row_of[:, left], row_of[:, right]
        ok = (rows_l >= 0) & (rows_r >= 0)
        mid = np.full(len(table.case_ids), np.nan)
        mid[ok] = np.where(x[rows_r[ok]] > x[rows_l[ok]], (x[rows_l[ok]] + x[rows_r[ok]]) / 2, np.nan)
        midpoints.append(mid)
    if not midpoints:
        return np.full(len(table.case_ids), np.nan)
    stacked = np.stack(midpoints)
    out = np.full(len(table.case_ids), np.nan)
    seen = np.isfinite(stacked).any(axis=0)
    out[seen] = np.nanmedian(stacked[:, seen], axis=0)
    return out


def piece_verdicts(table: FeatureTable, rules: RuleSet) -> PieceVerdicts:
    """Wrong-side islands and unnatural pieces (see the module docstring) for every piece."""
    pieces, cols, s = table.pieces, table.columns, rules.settings
    row_of = _row_index(table)
    case, label = pieces["case_index"], pieces["label"]
    row = row_of[case, label]
    midline = scan_midlines(table, rules.labels) if label.size else np.full(len(table.case_ids), np.nan)
    side = np.zeros(LABEL_SLOTS)
    for left, right in side_pairs(rules.labels):
        side[left], side[right] = -1.0, 1.0
    offset = side[label] * (cols["main_centroid_x"][row] - midline[case])  # > 0: main body on its own side
    depth = side[label] * (pieces["centroid_x"] - midline[case])  # < 0: the piece lies across the midline
    with np.errstate(invalid="ignore"):
        wrong_side = (side[label] != 0) & (offset > 0) & (depth < -SIDE_MARGIN * offset)
    values = {"log_share": np.log(pieces["voxel_count"] / cols["voxel_count"][row]), "gap_mm": pieces["gap_mm"]}
    learn = np.array([bool(getattr(rules.organs.get(i), "learn_pieces", False)) for i in range(LABEL_SLOTS)])
    candidates = learn[label] & ~wrong_side
    scans_with = np.zeros(LABEL_SLOTS, dtype=np.int64)
    np.add.at(scans_with, np.unique(np.stack([label[candidates], case[candidates]]), axis=1)[0], 1)
    learned = candidates & (scans_with[label] >= MIN_PIECE_SCANS)
    population, zscores = {}, {}
    for feature in PIECE_FEATURES:
        masked = np.where(learned, values[feature], np.nan)
        population[feature] = population_stats(masked, label, s.mad_floor[f"piece_{feature}"], MIN_PIECE_SCANS)
        zscores[feature] = robust_z(values[feature], label, population[feature])
    with np.errstate(invalid="ignore"):
        score = np.clip(zscores["log_share"], 0.0, None) + np.clip(zscores["gap_mm"], 0.0, None)
        unnatural = learned & (score > s.piece_threshold)
    return PieceVerdicts(row, wrong_side, unnatural, wrong_side | unnatural, zscores, population, midline)


def _rule_arrays(rules: RuleSet, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each organ-rule field as an array aligned with ``labels``."""
    fields = ("min_components", "max_components", "min_voxels", "min_largest_share", "check_shape",
              "check_position", "expected", "check_volume_share")
    lookup = {f: np.array([getattr(rules.organs.get(i), f, 0) if i else 0 for i in range(LABEL_SLOTS)])
              for f in fields}
    return {f: lookup[f][labels] for f in fields}


def piece_rows(table: FeatureTable, pieces: PieceVerdicts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``table``: whether its organ's pieces were learned and it lists every piece (then
    its pieces, not its component count, decide on fragments), whether it has a wrong-side
    piece, and whether it has an unnatural piece."""
    cols = table.columns
    learned = np.isfinite(pieces.population["gap_mm"].median)[cols["label"]] & (cols["n_components"] - 1 <= MAX_PIECES)
    wrong = np.zeros(learned.size, dtype=bool)
    unnatural = np.zeros(learned.size, dtype=bool)
    wrong[pieces.row[pieces.wrong_side]] = True
    unnatural[pieces.row[pieces.unnatural]] = True
    return learned, wrong, unnatural


def _flags(table: FeatureTable, rules: RuleSet, derived: dict[str, np.ndarray],
           zscores: dict[str, np.ndarray], pieces: PieceVerdicts | None = None) -> dict[str, np.ndarray]:
    """One boolean array per reason: does the reason apply to the row? (``pieces``: computed if not given)"""
    pieces = piece_verdicts(table, rules) if pieces is None else pieces
    cols = table.columns
    rule = _rule_arrays(rules, cols["label"])
    s = rules.settings
    n_comp = cols["n_components"]
    by_pieces, wrong_piece, unnatural = piece_rows(table, pieces)
    too_many = n_comp > rule["max_components"]
    flags = {
        "unexpected_label": ~rule["expected"].astype(bool),
        "too_small": cols["voxel_count"] < rule["min_voxels"],
        "too_few_components": n_comp < rule["min_components"],
        "fragmented": too_many & (rule["max_components"] == 1) & (cols["largest_share"] <= rule["min_largest_share"]),
    }
    flags["fragments"] = np.where(by_pieces, unnatural, too_many) & ~flags["fragmented"]
    flags["wrong_side_island"] = wrong_piece
    shape_checked = rule["check_shape"].astype(bool)
    for feature in OUTLIER_FEATURES:
        flags[f"outlier_{feature}"] = shape_checked & (np.nan_to_num(np.abs(zscores[feature])) > s.mad_threshold)
    flags["outlier_log_volume_share"] &= rule["check_volume_share"].astype(bool)
    flags["misplaced"] = rule["check_position"].astype(bool) & (np.nan_to_num(zscores["position"]) > s.position_threshold)
    flags["wrong_side"] = wrong_side_rows(table, derived["centroid_x"], zscores["rel_x"], rules.labels)
    flags["swapped"] = np.zeros_like(flags["wrong_side"])
    if s.repair_swaps and s.method == "ours":
        flags["swapped"] = swapped_pair_rows(table, flags, zscores, rules)
        flags["wrong_side"] &= ~flags["swapped"]
        flags["misplaced"] &= ~flags["swapped"]
    return flags


def decide(table: FeatureTable, rules: RuleSet) -> Decisions:
    """Decisions for every (scan, organ) row of ``table`` under ``rules`` (and its ``method``)."""
    cols = table.columns
    labels = cols["label"]
    s = rules.settings
    rules = learn_component_rules(rules, labels, cols["n_components"])
    pieces = piece_verdicts(table, rules)
    by_pieces = piece_rows(table, pieces)[0]
    derived = derived_features(table, rules, by_pieces)
    population, zscores = {}, {}
    for feature in (*OUTLIER_FEATURES, *(f"rel_{a}" for a in POSITION_AXES)):
        values = derived[feature]
        floor = s.mad_floor["position_mm"] if feature.startswith("rel_") else s.mad_floor[feature]
        population[feature] = population_stats(values, labels, floor, s.min_population)
        zscores[feature] = robust_z(values, labels, population[feature])
    zscores["position"] = np.abs(np.stack([zscores[f"rel_{a}"] for a in POSITION_AXES])).max(axis=0, initial=0.0)
    flags = _flags(table, rules, derived, zscores, pieces)
    order = [*REJECT_REASONS, *CLEAN_REASONS]
    matrix = np.stack([flags[r] for r in order]).reshape(len(order), labels.size)
    reject = matrix[: len(REJECT_REASONS)].any(axis=0)
    clean = matrix[len(REJECT_REASONS):].any(axis=0)
    reasons = [""] * labels.size
    paper_reasons = [""] * labels.size
    if s.method != "ours":
        paper, paper_reasons = paper_flags(table, s.epsilon, s.min_population)
        if s.method == "paper":
            reject, clean, matrix = paper, np.zeros_like(clean), np.zeros_like(matrix)
        else:
            reject = reject | paper
    decision = np.where(reject, REJECTED, np.where(clean, CLEANED, KEPT))
    for row in np.flatnonzero(matrix.any(axis=0)):
        reasons[row] = ";".join(r for r, on in zip(order, matrix[:, row]) if on)
    keep = np.where(by_pieces, 0, _rule_arrays(rules, labels)["max_components"])
    n_cases = len(table.case_ids)
    present = np.bincount(cols["case_index"], minlength=n_cases)
    rejected = np.bincount(cols["case_index"], weights=reject.astype(float), minlength=n_cases)
    fraction = rejected / np.maximum(present, 1)
    excluded = (fraction > s.max_rejected_fraction) & (rejected >= s.min_rejected_to_exclude)
    return Decisions(decision, reasons, zscores, keep, population, fraction, excluded,
                     paper_reasons, rules, pieces, flags["swapped"] & (decision == CLEANED))
