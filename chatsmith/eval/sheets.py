"""Blind rating sheets for human raters, as DreamerGPT's two raters scored its systems.

`chatsmith eval human --export-sheet DIR --raters 2 --answers ANS` writes DIR/rater1.csv, DIR/rater2.csv: one row
per (item, answer) with the columns sheet, id, category, slot, question, answer, score. System names are hidden
behind slots A, B, C... shuffled per item and per rater (a rater cannot learn that A is always the same system),
and the slot -> system key is stored apart, in ANS/human_key.json, so the sheets can be handed out as they are.
Raters fill the `score` column (0-10); `chatsmith eval human --ratings DIR/rater1.csv DIR/rater2.csv --answers ANS`
reads them back through the key (chatsmith.eval.human).

The sheets directory is written whole or not at all (chatsmith.outputs), and an existing one is never
overwritten: it may hold ratings in progress.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

from chatsmith.errors import ChatsmithError


def parse_score(raw: str, where: str, column: str) -> float:
    """One human score cell: a number from 0 to 10 (rating sheets and plain ratings CSVs read cells alike)."""
    try:
        v = float(raw)
    except ValueError:
        raise ChatsmithError(f"{where}: column {column!r}: {raw!r} is not a number") from None
    if not 0 <= v <= 10:
        raise ChatsmithError(f"{where}: column {column!r}: score {v:g} is outside 0-10")
    return v


KEY_FILE = "human_key.json"
COLUMNS = ["sheet", "id", "category", "slot", "question", "answer", "score"]
INSTRUCTIONS = """Rating sheets: score every answer 0-10 in the `score` column (10 = perfect), judging each on its own
merits. Answers to one question are labelled A, B, C... in an order that changes from question to question;
the systems behind the letters are hidden on purpose. Leave every other column as it is; save as CSV.
"""


def key_path(answers_dir: str | Path) -> Path:
    return Path(answers_dir) / KEY_FILE


def load_key(answers_dir: str | Path) -> dict[str, Any]:
    p = key_path(answers_dir)
    if not p.is_file():
        return {"sheets": {}}
    try:
        key = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ChatsmithError(f"{p}: not valid JSON ({e.msg}); it maps rating-sheet slots to systems") from None
    if not isinstance(key, dict) or not isinstance(key.get("sheets"), dict):
        raise ChatsmithError(f"{p}: expected {{\"sheets\": {{...}}}}")
    return key


def _slots(n: int) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else f"S{i + 1}" for i in range(n)]


def export_sheets(answers_dir: str | Path, out_dir: str | Path, raters: int = 2, seed: int = 0) -> list[Path]:
    """Write one blind sheet per rater into `out_dir` (new) and add their keys to ANS/human_key.json."""
    from chatsmith.eval.answer import load_answers
    from chatsmith.outputs import atomic_dir, atomic_write_text

    if raters < 1:
        raise ChatsmithError("--raters must be at least 1")
    out = Path(out_dir)
    if out.exists():
        raise ChatsmithError(f"{out}: already exists (it may hold ratings in progress); choose a new directory")
    d = Path(answers_dir)
    items, answers = load_answers(d)
    systems = list(answers)
    if not systems:
        raise ChatsmithError(f"{d}: no answers to rate; run `chatsmith eval answer` first")
    key = load_key(d)
    files: dict[str, str] = {}
    new_keys: dict[str, Any] = {}
    for r in range(1, raters + 1):
        digest = hashlib.sha256(json.dumps([str(d.resolve()), seed, r, systems, [it.id for it in items]])
                                .encode()).hexdigest()[:8]
        tag = f"r{r}-{digest}"
        rng = random.Random(f"{seed}:{tag}")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        slots_of: dict[str, dict[str, str]] = {}
        for it in items:
            have = [s for s in systems if it.id in answers[s] and "error" not in answers[s][it.id]]
            rng.shuffle(have)
            slots_of[it.id] = dict(zip(_slots(len(have)), have))
            for slot, s in slots_of[it.id].items():
                w.writerow([tag, it.id, it.category, slot, it.question_text(),
                            str(answers[s][it.id].get("answer", "")), ""])
        files[f"rater{r}.csv"] = buf.getvalue()
        new_keys[tag] = {"file": f"rater{r}.csv", "exported_to": str(out), "items": slots_of}
    key["sheets"].update(new_keys)
    key["systems"] = systems
    with atomic_dir(out) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / "INSTRUCTIONS.txt").write_text(INSTRUCTIONS, encoding="utf-8")
        # the key last inside the atomic step: a failed export leaves neither sheets nor a key for them
        atomic_write_text(key_path(d), json.dumps(key, indent=2, ensure_ascii=False) + "\n")
    return [out / name for name in files]


def is_sheet(columns: list[str]) -> bool:
    return "sheet" in columns and "slot" in columns


def read_sheet(p: Path, reader: csv.DictReader, key: dict[str, Any] | None
               ) -> tuple[dict[tuple[str, str], float], dict[str, str]]:
    """A filled blind sheet -> ({(item, system): score}, {item: category}) through the key. Every row needs its
    score: a blank one is an error (a skipped answer would otherwise bias the mean)."""
    if key is None:
        raise ChatsmithError(f"{p}: a blind rating sheet; pass --answers DIR (the directory it was exported from, "
                             f"holding {KEY_FILE}) to unblind it")
    scores: dict[tuple[str, str], float] = {}
    cats: dict[str, str] = {}
    for line, row in enumerate(reader, 2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        tag, item, slot, raw = row.get("sheet", ""), row.get("id", ""), row.get("slot", ""), row.get("score", "")
        sheet = key["sheets"].get(tag)
        if sheet is None:
            raise ChatsmithError(f"{p}:{line}: sheet {tag!r} is not in {KEY_FILE} (exported from another answers "
                                 "directory?)")
        system = sheet["items"].get(item, {}).get(slot)
        if system is None:
            raise ChatsmithError(f"{p}:{line}: item {item!r} slot {slot!r} is not on sheet {tag!r}")
        if raw == "":
            raise ChatsmithError(f"{p}:{line}: no score for item {item!r} answer {slot}; every answer needs a "
                                 "score 0-10")
        v = parse_score(raw, f"{p}:{line}", "score")
        if (item, system) in scores:
            raise ChatsmithError(f"{p}:{line}: item {item!r} answer {slot} is rated twice")
        scores[(item, system)] = v
        if row.get("category"):
            cats[item] = row["category"]
    expected = sum(len(slots) for slots in key["sheets"].get(tag, {}).get("items", {}).values()) if scores else 0
    if not scores:
        raise ChatsmithError(f"{p}: no ratings")
    if len(scores) < expected:
        raise ChatsmithError(f"{p}: {expected - len(scores)} of {expected} answers on sheet {tag!r} are missing "
                             "(rows deleted?); every answer needs a score 0-10")
    return scores, cats
