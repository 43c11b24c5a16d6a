"""Compare SOLF's decision rules (ours, the paper's, both) on cohorts with injected label errors.

For every seed: a synthetic UKBOB cohort (``--cases`` phantoms of 64×64×80, phantom seed = the
seed), and a copy in which ``--injected`` scans carry three errors each, the kinds cycling through
every kind of :mod:`swinbob.solf.inject` (swap, fragment, shrink, grow, move). Pass 1 measures
both cohorts once in memory (:func:`measure_organs`, what the pipeline runs on each file), then
pass 2 (:func:`decide`, as the CLI calls it) runs with each method on the same feature tables.

* recall (per kind and overall): an injected error is found when every organ it corrupted on
  purpose is flagged (rejected or cleaned), whatever the reason — the paper's rule has no
  reason names that match error kinds, so flags are compared as flags;
* precision: flags on an organ the injection changed (itself or a neighbour it grew or moved
  into) over all flags in the corrupted cohorts;
* clean-organ rejection: rejected organs over all organs of the clean cohorts.

    python benchmarks/bench_solf_methods.py [--seeds 7 8 9 10 11] [--cases 80] [--injected 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swinbob.labels import TOTALVIBE_LABELS  # noqa: E402
from swinbob.data.phantoms import ukbob_case  # noqa: E402
from swinbob.solf.decide import KEPT, REJECTED, decide  # noqa: E402
from swinbob.solf.features import measure_organs  # noqa: E402
from swinbob.solf.inject import KINDS, Injection, inject  # noqa: E402
from swinbob.solf.rules import METHODS, load_rules  # noqa: E402
from swinbob.solf.store import FeatureTable, build_table  # noqa: E402

ERRORS_PER_CASE, SHAPE = 3, (64, 64, 80)


def cohort_tables(seed: int, cases: int, injected: int) -> tuple[FeatureTable, FeatureTable, list[Injection]]:
    """Feature tables of the clean and the corrupted cohort of one seed, and the injections."""
    rng = np.random.default_rng(1000 + seed)
    clean, corrupted, injections = [], [], []
    for index in range(cases):
        case = ukbob_case(index, seed=seed, shape=SHAPE)
        label = case.label
        clean.append({"case_id": case.case_id, "status": "ok", "organs": measure_organs(label, case.affine)})
        if index < injected:
            protected: frozenset[int] = frozenset()
            for error in range(ERRORS_PER_CASE):
                kind = KINDS[(index * ERRORS_PER_CASE + error) % len(KINDS)]
                result = inject(case.case_id, label, case.affine, kind, rng, protected)
                if result is None:
                    continue
                label, injection = result
                injections.append(injection)
                protected |= frozenset(injection.primary)
        corrupted.append({"case_id": case.case_id, "status": "ok", "organs": measure_organs(label, case.affine)})
    return build_table(clean), build_table(corrupted), injections


def _verdicts(table: FeatureTable, decision: np.ndarray) -> dict[tuple[str, int], str]:
    cols = table.columns
    return {(table.case_ids[c], int(label)): str(d) for c, label, d in zip(cols["case_index"], cols["label"], decision)}


def score(clean: FeatureTable, corrupted: FeatureTable, injections: list[Injection], method: str,
          epsilon: float = 2.0) -> Counter:
    """Counts for one method on one seed: found/total per kind, flags, correct flags, clean rejections."""
    rules = load_rules(method=method, epsilon=epsilon)
    counts: Counter = Counter()
    verdict = _verdicts(corrupted, decide(corrupted, rules).decision)
    for injection in injections:
        found = all(verdict.get((injection.case_id, organ), KEPT) != KEPT for organ in injection.primary)
        counts[f"total_{injection.kind}"] += 1
        counts[f"found_{injection.kind}"] += found
        if not found:
            counts["missed " + injection.kind + " " + "+".join(TOTALVIBE_LABELS[o] for o in injection.primary)] += 1
    touched = {(i.case_id, organ) for i in injections for organ in i.touched}
    flagged = [key for key, d in verdict.items() if d != KEPT]
    counts["flags"] += len(flagged)
    counts["correct_flags"] += sum(key in touched for key in flagged)
    clean_decision = decide(clean, rules).decision
    counts["clean_organs"] += clean_decision.size
    counts["clean_rejected"] += int(np.sum(clean_decision == REJECTED))
    for label in clean.columns["label"][clean_decision == REJECTED].tolist():
        counts["clean rejection " + TOTALVIBE_LABELS[label]] += 1
    return counts


def report(totals: dict[str, Counter]) -> str:
    """Markdown table: recall per kind and overall, precision, clean rejection, per method."""
    header = ["method", *(f"recall {k}" for k in KINDS), "recall all", "precision", "clean rejected"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for method, c in totals.items():
        found = sum(c[f"found_{k}"] for k in KINDS)
        total = sum(c[f"total_{k}"] for k in KINDS)
        cells = [f"{c[f'found_{k}']}/{c[f'total_{k}']} ({c[f'found_{k}'] / max(1, c[f'total_{k}']):.0%})" for k in KINDS]
        cells += [f"{found}/{total} ({found / max(1, total):.1%})",
                  f"{c['correct_flags']}/{c['flags']} ({c['correct_flags'] / max(1, c['flags']):.1%})",
                  f"{c['clean_rejected']}/{c['clean_organs']} ({c['clean_rejected'] / max(1, c['clean_organs']):.2%})"]
        lines.append("| " + " | ".join([f"`{method}`", *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table (and per-seed lines)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9, 10, 11], help="phantom seeds, one cohort each")
    parser.add_argument("--cases", type=int, default=80, help="scans per cohort")
    parser.add_argument("--injected", type=int, default=30, help="scans with three injected errors each")
    parser.add_argument("--paper_epsilons", type=float, nargs="*", default=[1.0, 3.0],
                        help="extra rows: the paper's rule at these epsilons (its ablation tried 1, 2, 3)")
    args = parser.parse_args(argv)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    variants = [(m, 2.0) for m in METHODS] + [("paper", e) for e in args.paper_epsilons]
    totals = {(f"{m} ε={e:g}" if m != "ours" else m): Counter() for m, e in variants}
    start = time.perf_counter()
    for seed in args.seeds:
        clean, corrupted, injections = cohort_tables(seed, args.cases, args.injected)
        for (method, epsilon), name in zip(variants, totals):
            counts = score(clean, corrupted, injections, method, epsilon)
            totals[name] += counts
            found = sum(counts[f"found_{k}"] for k in KINDS)
            print(f"seed {seed} {name:11s}: found {found}/{len(injections)}, flags {counts['flags']} "
                  f"({counts['correct_flags']} correct), clean rejected {counts['clean_rejected']}/{counts['clean_organs']}",
                  flush=True)
    print(f"\n{len(args.seeds)} cohorts of {args.cases} scans ({args.injected} with {ERRORS_PER_CASE} errors each), "
          f"{time.perf_counter() - start:.0f} s\n")
    print(report(totals))
    for name, counts in totals.items():
        for prefix in ("missed", "clean rejection"):
            top = sorted(((k[len(prefix) + 1:], v) for k, v in counts.items() if k.startswith(prefix + " ")),
                         key=lambda item: (-item[1], item[0]))[:8]
            print(f"{name} {prefix} (most frequent): " + ", ".join(f"{k} {v}" for k, v in top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
