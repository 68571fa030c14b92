"""What two fingerprints differ in, readably: the sections and their first differences."""

from __future__ import annotations

from typing import Any

#: a fingerprint: section name -> sorted rows (tuples of plain values)
Fingerprint = dict[str, list[tuple[Any, ...]]]


def differences(expected: Fingerprint, actual: Fingerprint, *, limit: int = 5) -> str:
    """Empty when equal; else per differing section the rows only one side has."""
    lines = []
    for section in sorted(expected.keys() | actual.keys()):
        before, after = expected.get(section, []), actual.get(section, [])
        if before == after:
            continue
        lost = [row for row in before if row not in after]
        gained = [row for row in after if row not in before]
        lines.append(f"{section}: {len(lost)} row(s) lost, {len(gained)} row(s) gained")
        lines += [f"  - {_short(row)}" for row in lost[:limit]]
        lines += [f"  + {_short(row)}" for row in gained[:limit]]
    return "\n".join(lines)


def _short(row: tuple[Any, ...], width: int = 300) -> str:
    text = repr(row)
    return text if len(text) <= width else text[:width] + "..."
