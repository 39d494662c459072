"""The output JSONL (append-only, one flushed and fsynced write per row) and the report of what was kept and
rejected, by instructor and reason.

Resume: `RowFile.recover` reads the rows already written, cuts a torn last line (a kill mid-write leaves a
line without its newline; that row was never counted, so it is made again) and returns the rows, from which
the per-instructor counts and the duplicate index are rebuilt. The report accumulates over runs and is
replaced atomically (temp file, then rename).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from chatsmith.errors import ChatsmithError
from chatsmith.outputs import atomic_write_text

ROW_FIELDS = ("instruction", "response", "category", "system")


def make_row(instruction: str, response: str, category: str, system: str | None) -> dict[str, str]:
    row = {"instruction": instruction, "response": response, "category": category}
    if system:
        row["system"] = system
    return row


def make_conversation_row(messages: list[dict[str, str]], category: str, system: str | None) -> dict[str, Any]:
    """A multi-turn row in the messages format (user, assistant, ... ending with the assistant)."""
    row: dict[str, Any] = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                           "category": category}
    if system:
        row["system"] = system
    return row


def row_instruction(row: dict[str, Any]) -> str:
    """What the duplicate index keys a row by: its instruction, or a conversation's first user turn."""
    if "messages" in row:
        return next((m["content"] for m in row["messages"] if m.get("role") == "user"), "")
    return row["instruction"]


def _valid_row(row: Any) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("category"), str):
        return False
    if "messages" in row:
        msgs = row["messages"]
        return (isinstance(msgs, list) and len(msgs) >= 2 and len(msgs) % 2 == 0
                and all(isinstance(m, dict) and m.get("role") == ("user", "assistant")[i % 2]
                        and isinstance(m.get("content"), str) for i, m in enumerate(msgs)))
    return all(isinstance(row.get(k), str) for k in ROW_FIELDS[:2])


class RowFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = None

    def recover(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line: drop it so the row is generated again
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        rows = []
        for lineno, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ChatsmithError(f"{self.path}:{lineno}: not valid JSON ({e.msg}); fix or move the file "
                                     "before resuming") from None
            if not _valid_row(row):
                raise ChatsmithError(f"{self.path}:{lineno}: expected an object with string instruction, "
                                     "response and category, or messages (user, assistant, ...) and category")
            rows.append(row)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        # one write per row; flush + fsync so a crash right after still keeps it
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Report:
    """Per instructor: target, kept, rejected {reason: n}, unused instructions; teacher call counters."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.instructors: dict[str, dict[str, Any]] = {}
        self.teacher: Counter = Counter()
        self.runs = 0

    def load(self) -> "Report":
        if self.path.is_file():
            try:
                obj = json.loads(self.path.read_text(encoding="utf-8"))
                for name, rec in obj.get("instructors", {}).items():
                    self.entry(name).update(rejected=Counter(rec.get("rejected", {})),
                                            unused_instructions=int(rec.get("unused_instructions", 0)),
                                            batch_failures=Counter(rec.get("batch_failures", {})))
                self.teacher.update(obj.get("teacher", {}))
                self.runs = int(obj.get("runs", 0))
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
                pass  # an unreadable old report only loses statistics, never rows
        return self

    def entry(self, name: str) -> dict[str, Any]:
        return self.instructors.setdefault(name, {"target": 0, "kept": 0, "rejected": Counter(),
                                                  "unused_instructions": 0, "batch_failures": Counter(),
                                                  "gave_up": False})

    def reject(self, name: str, reason: str) -> None:
        self.entry(name)["rejected"][reason] += 1

    def to_dict(self) -> dict[str, Any]:
        inst = {}
        for name, rec in self.instructors.items():
            rejected = dict(sorted(rec["rejected"].items()))
            inst[name] = {"target": rec["target"], "kept": rec["kept"], "rejected": rejected,
                          "rejected_total": sum(rejected.values()),
                          "candidates": rec["kept"] + sum(rejected.values()),
                          "unused_instructions": rec["unused_instructions"],
                          "batch_failures": dict(sorted(rec["batch_failures"].items())),
                          "gave_up": rec["gave_up"]}
        return {"runs": self.runs, "instructors": inst, "teacher": dict(sorted(self.teacher.items()))}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        rows = [("instructor", "target", "kept", "rejected", "top reasons")]
        for name, rec in self.to_dict()["instructors"].items():
            top = sorted(rec["rejected"].items(), key=lambda kv: -kv[1])[:3]
            note = ", ".join(f"{k} {v}" for k, v in top)
            if rec["batch_failures"]:  # teacher calls that produced no task at all
                note += "  failed task calls: " + ", ".join(f"{k} {v}" for k, v in rec["batch_failures"].items())
            note += "  (gave up)" if rec["gave_up"] else ""
            rows.append((name, str(rec["target"]), str(rec["kept"]), str(rec["rejected_total"]), note))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for r in rows:
            cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r[:4], widths, strict=True))]
            lines.append(("  ".join(cells) + "  " + r[4]).rstrip())
        t = self.teacher
        retries = sum(v for k, v in t.items() if k.startswith("retry."))
        failed = sum(v for k, v in t.items() if k.startswith("failed."))
        lines.append(f"teacher: {t.get('calls', 0)} calls, {t.get('ok', 0)} ok, {retries} retried, {failed} failed")
        return "\n".join(lines)
