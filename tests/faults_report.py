"""What the fault-injection suite (``-m faults``) tried and how each attempt was answered.

Tests call :func:`record_input` for every bad input they feed to a consumer and
:func:`record_fault` for every fault they inject (a killed process, a torn write, ...);
``tests/conftest.py`` prints :func:`summary_lines` from its ``pytest_terminal_summary`` hook, so
the tables appear after ``pytest -m faults`` and after the full run. Outcomes are recorded from
what actually happened (the exception text, the exit status), never from what a test expected.

The registry lives in the pytest process: tests that inject faults into subprocesses record the
outcome they observed from the outside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_CELL = 110
"""Long messages (temporary paths, nested causes) are cut to keep the table readable."""


@dataclass(frozen=True)
class InputOutcome:
    """One bad input given to one consumer (``description`` names both) and how it was answered."""

    category: str
    description: str
    outcome: str


@dataclass(frozen=True)
class FaultOutcome:
    """One injected fault: whether the system survived it and how many records or files it lost."""

    name: str
    survived: bool
    data_lost: int


INPUTS: list[InputOutcome] = []
FAULTS: list[FaultOutcome] = []
CLASSES: dict[str, list[bool]] = {}
"""Attack classes of tests/test_reliability.py: per class, whether each attack was held."""


def record_input(category: str, description: str, outcome: str) -> None:
    """Remember that ``description`` (category ``category``) was answered with ``outcome``."""
    INPUTS.append(InputOutcome(category, description, outcome))


def record_fault(name: str, survived: bool, data_lost: int = 0) -> None:
    """Remember one injected fault; ``data_lost`` counts records/outputs lost (must be 0)."""
    FAULTS.append(FaultOutcome(name, bool(survived), int(data_lost)))


def record_class(name: str, held: bool) -> None:
    """Remember one attack of class ``name`` (e.g. ``"1 stale cached data"``) and whether it was held."""
    CLASSES.setdefault(name, []).append(bool(held))


def refused(exc: BaseException | str, strip: str | os.PathLike | None = None) -> str:
    """``"refused: <first line of the message>"``, with the temporary folder ``strip`` shortened."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if strip is not None:
        text = text.replace(str(strip), "…")
    return f"refused: {text}"


def handled(detail: str = "") -> str:
    """``"handled"`` with an optional note on how."""
    return f"handled: {detail}" if detail else "handled"


def _cut(text: str, width: int = MAX_CELL) -> str:
    text = " ".join(text.split())  # newlines in file names or messages would break the table
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), line, *(fmt.format(*r) for r in rows)]


def summary_lines() -> list[str]:
    """The inputs table (grouped by category), the faults table and the totals; empty if nothing ran."""
    lines: list[str] = []
    if INPUTS:
        categories = sorted({i.category for i in INPUTS})
        counts = {c: sum(i.category == c for i in INPUTS) for c in categories}
        refusals = sum(i.outcome.startswith("refused") for i in INPUTS)
        lines.append(f"bad inputs tried: {len(INPUTS)} in {len(categories)} categories "
                     f"({refusals} refused with a message, {len(INPUTS) - refusals} handled)")
        rows = [(i.category, _cut(i.description, 60), _cut(i.outcome)) for c in categories for i in INPUTS if i.category == c]
        lines += _table(("category", "input -> consumer", "answer"), rows)
        lines.append("per category: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    if FAULTS:
        if lines:
            lines.append("")
        survived = sum(f.survived for f in FAULTS)
        lost = sum(f.data_lost for f in FAULTS)
        rows = [(_cut(f.name, 90), "yes" if f.survived else "NO", str(f.data_lost)) for f in FAULTS]
        lines += _table(("fault injected", "survived", "data lost"), rows)
        lines.append(f"faults injected: {len(FAULTS)}, survived: {survived}, data lost: {lost}")
    if CLASSES:
        if lines:
            lines.append("")
        rows = [(name, str(len(held)), str(sum(held))) for name, held in sorted(CLASSES.items())]
        lines += _table(("attack class", "attacks", "held"), rows)
    return lines
