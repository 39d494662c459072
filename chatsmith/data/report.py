"""What prepare kept and dropped, per source: report.json and the printed table.

Invariant, per source: kept + sum(dropped.values()) == read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chatsmith.data.problems import REASONS

MAX_EXAMPLES = 20       # messages kept per source and reason
MAX_LINES = 1000        # line numbers kept per source and reason


@dataclass
class SourceStats:
    name: str
    path: str
    format: str
    weight: float
    unit: str = "line"
    read: int = 0
    kept: int = 0
    truncated: int = 0
    val: int = 0
    train: int = 0
    dropped: Counter = field(default_factory=Counter)
    lines: dict[str, list[int]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    sample: float | None = None     # ~SAMPLE: only these rows were read ...
    available: int | None = None    # ... of this many in the source

    def drop(self, reason: str, position: int, message: str) -> None:
        self.dropped[reason] += 1
        lines = self.lines.setdefault(reason, [])
        if len(lines) < MAX_LINES:
            lines.append(position)
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(f"{self.unit} {position}: {message}")

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "format": self.format, "weight": self.weight,
                "read": self.read, "kept": self.kept, "dropped_total": self.dropped_total,
                "dropped": {r: self.dropped[r] for r in REASONS if self.dropped[r]},
                "truncated": self.truncated, "val": self.val, "train": self.train,
                "position_unit": self.unit, "dropped_at": self.lines, "examples": self.examples,
                "sample": self.sample, "available": self.available}


def totals(stats: list[SourceStats]) -> dict[str, Any]:
    dropped: Counter = Counter()
    for s in stats:
        dropped.update(s.dropped)
    read = sum(s.read for s in stats)
    return {"read": read, "kept": sum(s.kept for s in stats), "dropped_total": sum(dropped.values()),
            "dropped": {r: dropped[r] for r in REASONS if dropped[r]},
            "truncated": sum(s.truncated for s in stats), "val": sum(s.val for s in stats),
            "train": sum(s.train for s in stats),
            "drop_fraction": (sum(dropped.values()) / read) if read else 0.0}


def format_table(report: dict[str, Any], examples: int = 3) -> str:
    """A plain-text table: one row per source and a total, then a few example drops per reason."""
    sources = report["sources"]
    reasons = [r for r in REASONS if report["totals"]["dropped"].get(r)]
    cols = ["source", "format", "weight", "read", "kept", "dropped", *[REASONS[r] for r in reasons]]
    if report["totals"]["truncated"]:
        cols.append("truncated")
    cols += ["val", "train"]

    def row(d: dict, name: str, fmt: str, weight: str) -> list[str]:
        out = [name, fmt, weight, str(d["read"]), str(d["kept"]), str(d["dropped_total"]),
               *[str(d["dropped"].get(r, 0)) for r in reasons]]
        if report["totals"]["truncated"]:
            out.append(str(d["truncated"]))
        return out + [str(d["val"]), str(d["train"])]

    rows = [row(s, s["name"], s["format"], f"{s['weight']:g}") for s in sources]
    rows.append(row(report["totals"], "TOTAL", "", ""))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    fmt_line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt_line(cols), fmt_line(["-" * w for w in widths])]
    lines += [fmt_line(r) for r in rows[:-1]]
    lines += [fmt_line(["-" * w for w in widths]), fmt_line(rows[-1])]
    t = report["totals"]
    lines.append(f"dropped {t['dropped_total']} of {t['read']} rows ({100 * t['drop_fraction']:.2f}%)")
    for s in sources:
        if s.get("sample") is not None:
            lines.append(f"  {s['name']}: read a sample of {s['read']} of its {s['available']} rows "
                         f"(~{s['sample']:g}, seed {report.get('seed', 0)})")
    if examples:
        for s in sources:
            for reason, msgs in s["examples"].items():
                more = s["dropped"][reason] - min(examples, len(msgs))
                for m in msgs[:examples]:
                    lines.append(f"  {s['name']} {m} [{REASONS[reason]}]")
                if more > 0:
                    lines.append(f"  {s['name']}: ... {more} more {REASONS[reason]} (see report.json)")
    return "\n".join(lines)
