"""Evaluate a Swin-BOB BRATS model with entropy test-time adaptation: `python test_etta.py --help`."""

import sys
from pathlib import Path

try:
    from swinbob.infer.cli import main
except ImportError:  # run from a source checkout without installing: put the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from swinbob.infer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], default_task="brats"))
