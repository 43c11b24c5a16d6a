"""The ``swinbob`` command: ``swinbob predict|train|evaluate|solf ...`` (each also has its own script)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: swinbob COMMAND [options]   (swinbob COMMAND --help for its options)

commands:
  predict    segment a folder of scans with a checkpoint (-i IN_DIR -o OUT_DIR -m CHECKPOINT)
  train      train or fine-tune (UKBOB/main.py flags; --task auto for your own dataset.json)
  evaluate   evaluate a checkpoint on a datalist, with ETTA (test_etta.py flags)
  solf       clean TotalVibeSegmentator labels (UKBOB/filtering/organ_filtering.py flags)
  merge      combine the parts of a split prediction (--num_parts) into one folder's tables (OUT_DIR)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the command's entry point; exit 2 for an unknown command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "predict":
        from swinbob.infer.predict import main as run
    elif command == "train":
        from swinbob.train.cli import main as run
    elif command == "evaluate":
        from swinbob.infer.cli import main as run
    elif command == "merge":
        from swinbob.infer.parts import merge_main as run
    elif command == "solf":
        from swinbob.solf.cli import organ_filtering_entry as run
    else:
        print(f"swinbob: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    return int(run(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
