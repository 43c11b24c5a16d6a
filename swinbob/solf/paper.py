"""The UKBOB paper's SOLF rule: a two-of-three vote over population percentiles (``--method paper``).

As the paper describes it, every organ label of every scan is described by three features:

* normalised volume ``V_organ / V_body``. ``V_body`` is the volume of the body mask when one is
  given (``--body_dir``, measured in pass 1), otherwise the union of all labels of the scan,
  i.e. the sum of every labelled organ's volume (labels do not overlap, so the union is the sum);
* sphericity ``π^(1/3) (6V)^(2/3) / A`` and
* eccentricity ``sqrt(1 - λ_min / λ_max)`` of the whole label (all its components, as pass 1
  measures them in :mod:`swinbob.solf.features`).

For each organ and feature, the values of the population (every scan holding that organ) below
its ε-th percentile or above its (100 - ε)-th percentile are out of range (``numpy.percentile``,
linear interpolation; strict inequalities, so a value equal to a percentile is in range). A label
is flagged, and rejected, when at least two of its three features are out of range. Organs seen
in fewer than ``min_population`` scans are not tested, as in our rule. The paper picks ε = 2 in
its ablation (BTCV Dice 0.792 unfiltered, 0.884 at ε = 1, 0.892 at ε = 2, 0.766 at ε = 3).

By construction the vote rejects about the same share of every organ in every cohort, clean or
not (features out of range in at least two of three ways, each ``2ε`` % of the population); it
has no notion of left and right, component counts or position.
"""

from __future__ import annotations

import numpy as np

from swinbob.solf.labelsets import LABEL_SLOTS, finite_values_by_label
from swinbob.solf.store import FeatureTable

PAPER_FEATURES = ("normalised_volume", "sphericity", "eccentricity")
PAPER_REASONS = tuple(f"paper_{f}" for f in PAPER_FEATURES)
VOTES_NEEDED = 2


def body_volume(table: FeatureTable) -> np.ndarray:
    """Body volume (mm³) of each row's scan: the body mask's if measured, else the union of labels."""
    cols = table.columns
    case = cols["case_index"]
    union = np.bincount(case, weights=cols["volume_mm3"], minlength=len(table.case_ids))[case]
    mask = cols.get("body_volume_mm3")
    if mask is None:
        return union
    return np.where(np.isfinite(mask) & (mask > 0), mask, union)


def paper_features(table: FeatureTable) -> dict[str, np.ndarray]:
    """The paper's three features for every (scan, organ) row."""
    cols = table.columns
    return {"normalised_volume": cols["volume_mm3"] / body_volume(table),
            "sphericity": cols["sphericity"], "eccentricity": cols["eccentricity"]}


def percentile_bounds(values: np.ndarray, labels: np.ndarray, epsilon: float,
                      min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per label (index = ID): the ε-th and (100 - ε)-th percentile of ``values`` (NaN if too few)."""
    low = np.full(LABEL_SLOTS, np.nan)
    high = np.full(LABEL_SLOTS, np.nan)
    for label, x in finite_values_by_label(values, labels, min_count):
        low[label], high[label] = np.percentile(x, [epsilon, 100.0 - epsilon])
    return low, high


def out_of_range(table: FeatureTable, epsilon: float, min_count: int) -> dict[str, np.ndarray]:
    """Per paper feature: is each row outside its organ's [P_ε, P_(100-ε)] range?"""
    labels = table.columns["label"]
    out = {}
    for name, values in paper_features(table).items():
        low, high = percentile_bounds(values, labels, epsilon, min_count)
        with np.errstate(invalid="ignore"):
            out[name] = (values < low[labels]) | (values > high[labels])
    return out


def paper_flags(table: FeatureTable, epsilon: float, min_count: int) -> tuple[np.ndarray, list[str]]:
    """Rows the paper's rule flags (at least two of three features out of range) and their reasons."""
    outside = out_of_range(table, epsilon, min_count)
    matrix = np.stack([outside[f] for f in PAPER_FEATURES]).reshape(len(PAPER_FEATURES), -1)
    flagged = matrix.sum(axis=0) >= VOTES_NEEDED
    reasons = [""] * flagged.size
    for row in np.flatnonzero(flagged):
        reasons[row] = ";".join(r for r, on in zip(PAPER_REASONS, matrix[:, row]) if on)
    return flagged, reasons
