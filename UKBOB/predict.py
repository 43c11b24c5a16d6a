"""Segment a folder of scans with a Swin-BOB checkpoint: `python predict.py -i IN_DIR -o OUT_DIR -m model.pt`."""

import sys
from pathlib import Path

try:
    from swinbob.infer.predict import main
except ImportError:  # run from a source checkout without installing: put the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from swinbob.infer.predict import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], default_task="ukbob"))
