"""SOLF (Specialized Organ Label Filter): per-organ QC of automatic label maps (TotalVibeSegmentator
by default; TotalSegmentator or any named label set through :mod:`~swinbob.solf.labelsets`).

Pass 1 (:mod:`~swinbob.solf.features`, :mod:`~swinbob.solf.cases`, :mod:`~swinbob.solf.store`)
measures every organ of every scan; pass 2 (:mod:`~swinbob.solf.rules`,
:mod:`~swinbob.solf.decide`, :mod:`~swinbob.solf.paper`, :mod:`~swinbob.solf.outputs`) keeps, cleans
or rejects each organ (our rules, the paper's percentile vote, or both) and
writes the cleaned training set; :mod:`~swinbob.solf.pipeline` runs the stages; :mod:`~swinbob.solf.cli` holds its flags.
"""

from swinbob.solf.cli import organ_filtering_entry
from swinbob.solf.pipeline import SolfConfig, run_solf

__all__ = ["SolfConfig", "organ_filtering_entry", "run_solf"]
