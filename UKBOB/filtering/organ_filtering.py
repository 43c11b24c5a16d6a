"""SOLF: clean TotalVibeSegmentator label maps into a training set (see swinbob.solf.pipeline).

Works from the repository root (``python UKBOB/filtering/organ_filtering.py``), from ``UKBOB/``
(``python filtering/organ_filtering.py``) and with ``swinbob`` installed anywhere.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("swinbob") is None:  # not installed: use the checkout this file is in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from swinbob.solf.cli import organ_filtering_entry  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(organ_filtering_entry())
