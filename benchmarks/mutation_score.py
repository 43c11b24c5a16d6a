"""Mutation score per module from the last ``mutmut run`` (``make mutation`` runs both).

Reads ``mutmut results --all true`` in the repository root and prints, for the mutants matching
the scope patterns (the same as ``mutmut run`` was given), killed / total per module and overall,
and the surviving mutants by name (each must be killed by a test or listed, with its reason, in
tests/mutation_equivalents.md). A timeout counts as killed, as mutmut's own score does; a mutant
not run yet is reported as such, not counted.

    python benchmarks/mutation_score.py "swinbob.infer.metrics*" "swinbob.train.losses*"
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout"}


def results(mutmut: str) -> dict[str, str]:
    """``{mutant name: status}`` of every mutant mutmut knows."""
    out = subprocess.run([mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s+(\S+): (.+)$", out, flags=re.MULTILINE))


def module_of(name: str) -> str:
    """``swinbob.infer.etta.x_adapt__mutmut_3`` -> ``swinbob.infer.etta``."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def main(patterns: list[str]) -> int:
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    statuses = {k: v for k, v in results(mutmut).items() if not patterns or any(fnmatch.fnmatch(k, p) for p in patterns)}
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in statuses.items():
        by_module[module_of(name)][status] += 1
    total_killed = total_run = 0
    for module, counts in sorted(by_module.items()):
        run = sum(n for s, n in counts.items() if s != "not checked")
        killed = sum(counts[s] for s in KILLED)
        total_killed, total_run = total_killed + killed, total_run + run
        extra = f", {counts['not checked']} not run" if counts["not checked"] else ""
        print(f"{module:28s} {killed:5d} / {run:5d} killed ({100 * killed / max(run, 1):5.1f} %){extra}")
    print(f"{'all':28s} {total_killed:5d} / {total_run:5d} killed ({100 * total_killed / max(total_run, 1):5.1f} %)")
    survivors = sorted(k for k, v in statuses.items() if v not in KILLED and v != "not checked")
    if survivors:
        print("not killed:", *survivors, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
