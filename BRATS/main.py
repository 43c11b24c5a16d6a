"""Train Swin-BOB on BraTS with the upstream research flags: `python main.py --help`."""

import sys
from pathlib import Path

try:
    import swinbob  # noqa: F401  (installed, or run from the repository root)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swinbob.train.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_task="brats"))
