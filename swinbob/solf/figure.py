"""SOLF report figure: per-organ feature distributions with the population thresholds drawn.

One panel per tested feature (log-volume, log-surface, sphericity, eccentricity, and the largest
robust position z-score); organs along the x axis; each scan × organ is a dot (grey kept, orange
cleaned, red rejected; kept dots are subsampled per organ so that 50,000-scan cohorts stay
readable); the short black bars are each organ's median ± threshold · MAD / 0.6745, i.e. where
the robust z-score crosses the threshold. matplotlib is optional: without it the figure is
skipped with a warning.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from swinbob.files import atomic_write
from swinbob.solf.labelsets import name_of
from swinbob.solf.decide import CLEANED, MAD_TO_Z, REJECTED, Decisions, derived_features
from swinbob.solf.rules import OUTLIER_FEATURES, RuleSet
from swinbob.solf.store import FeatureTable

log = logging.getLogger(__name__)
MAX_KEPT_DOTS = 300
COLOURS = {"kept": "0.6", CLEANED: "tab:orange", REJECTED: "tab:red"}


def _dots(labels: np.ndarray, decision: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows to draw: every flagged row, and at most MAX_KEPT_DOTS kept rows per organ."""
    rows = [np.flatnonzero(decision != "kept")]
    for label in np.unique(labels):
        kept = np.flatnonzero((labels == label) & (decision == "kept"))
        rows.append(kept if kept.size <= MAX_KEPT_DOTS else rng.choice(kept, MAX_KEPT_DOTS, replace=False))
    return np.sort(np.concatenate(rows))


def plot_report(path: Path, table: FeatureTable, decisions: Decisions, rules: RuleSet) -> bool:
    """Write the figure to ``path`` (atomically); False if matplotlib is missing or nothing to plot."""
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed; skipping the report figure (pip install matplotlib)")
        return False
    labels = table.columns["label"]
    if labels.size == 0:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    organs = np.unique(labels)
    position = {int(label): i for i, label in enumerate(organs)}
    x = np.array([position[int(label)] for label in labels], dtype=float)
    rows = _dots(labels, decisions.decision, np.random.default_rng(0))
    jitter = np.random.default_rng(1).uniform(-0.3, 0.3, labels.size)
    values = {**derived_features(table, rules), "position_z": decisions.zscores["position"]}
    panels = [*OUTLIER_FEATURES, "position_z"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(10.0, 0.28 * organs.size), 2.6 * len(panels)), sharex=True)
    settings = rules.settings
    for ax, feature in zip(axes, panels):
        for verdict, colour in COLOURS.items():
            chosen = rows[decisions.decision[rows] == verdict]
            ax.scatter(x[chosen] + jitter[chosen], values[feature][chosen], s=4 if verdict == "kept" else 10,
                       c=colour, label=verdict, linewidths=0)
        if feature == "position_z":
            ax.axhline(settings.position_threshold, color="k", lw=0.8)
        else:
            stats = decisions.population[feature]
            half = settings.mad_threshold * stats.scale[organs] / MAD_TO_Z
            centres = np.arange(organs.size)
            for bound in (stats.median[organs] - half, stats.median[organs] + half):
                ax.hlines(bound, centres - 0.4, centres + 0.4, colors="k", lw=0.8)
        ax.set_ylabel(feature.replace("_", " "))
    axes[0].legend(loc="upper right", fontsize=7, markerscale=2)
    axes[0].set_title(f"SOLF: {len(table.case_ids)} scans, thresholds |z| > {settings.mad_threshold:g} (shape), "
                      f"{settings.position_threshold:g} (position)")
    axes[-1].set_xticks(np.arange(organs.size), [name_of(rules.labels, int(o)) for o in organs], rotation=90, fontsize=7)
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return True
