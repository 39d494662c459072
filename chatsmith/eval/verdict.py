"""Reading a judge's reply: JSON verdicts first, then the seed's "System N score; System N explanation" text.

`parse_verdict(text, n)` returns {position: (score, explanation)} for positions 1..n, or raises VerdictError
saying what was wrong (no JSON and no "System N" lines, a missing system, a score outside 0-10). Positions are
the order the judge was shown; the caller maps them back to system names.
"""

from __future__ import annotations

import json
import re
from typing import Any


class VerdictError(ValueError):
    """A judge reply that does not hold a complete verdict."""


_NUM = r"(-?\d+(?:\.\d+)?)"
_SYSTEM = re.compile(r"(?:System|系统)\s*[_#-]?\s*(\d+)", re.IGNORECASE)
_SCORE_LABEL = re.compile(r"^\s*(?:的)?\s*(?:分数|得分|评分|打分|score|rating)\s*(?:为|是)?\s*[::=]?\s*", re.IGNORECASE)
_EXPL_LABEL = re.compile(r"^\s*(?:的)?\s*(?:解释|理由|说明|explanation|reason(?:ing)?)\s*[::=]?\s*", re.IGNORECASE)
_LEAD_SCORE = re.compile(r"^\s*[::=]?\s*\**\s*" + _NUM + r"\s*(?:/\s*10|分|points?)?\s*\**")


def _position(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        m = re.search(r"\d+", v)
        return int(m.group()) if m else None
    return None


def _score(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = re.match(r"\s*" + _NUM, v)
        return float(m.group(1)) if m else None
    return None


def _json_candidates(text: str) -> list[Any]:
    """Every JSON object/array that decodes, from the whole text, code fences, then each '{' or '['."""
    out: list[Any] = []
    stripped = text.strip()
    fences = re.findall(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    for chunk in [stripped, *fences]:
        try:
            out.append(json.loads(chunk))
        except (json.JSONDecodeError, ValueError):
            pass
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                obj, _ = dec.raw_decode(text, i)
                out.append(obj)
            except json.JSONDecodeError:
                continue
    return [o for o in out if isinstance(o, (dict, list))]


def _from_json(obj: Any, n: int) -> dict[int, tuple[float | None, str]]:
    found: dict[int, tuple[float | None, str]] = {}
    entries: Any = obj
    if isinstance(obj, dict):
        for key in ("scores", "verdicts", "results", "ratings", "systems"):
            if key in obj:
                entries = obj[key]
                break
        else:
            if "score" in obj:      # a single verdict {"score", "explanation"}
                entries = [obj]
    if isinstance(entries, list):
        for idx, e in enumerate(entries):
            if isinstance(e, dict):
                pos = _position(e.get("system", e.get("id", e.get("index", idx + 1))))
                sc = _score(e.get("score", e.get("rating")))
                expl = str(e.get("explanation", e.get("reason", e.get("解释", ""))) or "")
            else:
                pos, sc, expl = idx + 1, _score(e), ""
            if pos is not None:
                found[pos] = (sc, expl)
    elif isinstance(entries, dict):  # {"System1": 8} or {"System 1": {"score": 8, "explanation": ...}}
        for k, v in entries.items():
            pos = _position(k)
            if pos is None:
                continue
            if isinstance(v, dict):
                found[pos] = (_score(v.get("score", v.get("rating"))), str(v.get("explanation", "") or ""))
            else:
                found[pos] = (_score(v), "")
    return found


def _from_text(text: str) -> dict[int, tuple[float | None, str]]:
    """The seed's format, in its variants: "System1:8;解释" / "System 1 分数:8;System 1 解释:..." /
    "System 2: 7/10 - explanation"."""
    scores: dict[int, float] = {}
    expls: dict[int, str] = {}
    marks = list(_SYSTEM.finditer(text))
    for j, m in enumerate(marks):
        pos = int(m.group(1))
        seg = text[m.end(): marks[j + 1].start() if j + 1 < len(marks) else len(text)]
        if _EXPL_LABEL.match(seg):
            expls[pos] = _EXPL_LABEL.sub("", seg, count=1).strip(" \t\n;;。")  # noqa: B005 (a set of characters)
            continue
        seg = _SCORE_LABEL.sub("", seg, count=1)
        sm = _LEAD_SCORE.match(seg)
        if sm and pos not in scores:
            scores[pos] = float(sm.group(1))
            rest = seg[sm.end():].strip(" \t\n;;,,。-–:")  # noqa: B005 (a set of characters)
            rest = _EXPL_LABEL.sub("", rest, count=1).strip()
            if rest and pos not in expls:
                expls[pos] = rest
    return {p: (s, expls.get(p, "")) for p, s in scores.items()}


def _check(found: dict[int, tuple[float | None, str]], n: int) -> dict[int, tuple[float, str]]:
    missing = [p for p in range(1, n + 1) if p not in found or found[p][0] is None]
    if missing:
        raise VerdictError("no score for " + ", ".join(f"System {p}" for p in missing))
    out = {}
    for p in range(1, n + 1):
        sc, expl = found[p]
        if not 0 <= sc <= 10:  # type: ignore[operator]
            raise VerdictError(f"System {p} score {sc:g} is outside 0-10")
        out[p] = (float(sc), expl)  # type: ignore[arg-type]
    return out


def parse_verdict(text: str, n: int) -> dict[int, tuple[float, str]]:
    """Scores for positions 1..n from a judge reply (JSON, else the seed's text format)."""
    if not text or not text.strip():
        raise VerdictError("empty reply")
    last_err: VerdictError | None = None
    for obj in _json_candidates(text):
        found = _from_json(obj, n)
        if found:
            try:
                return _check(found, n)
            except VerdictError as e:
                last_err = last_err or e
    found = _from_text(text)
    if found:
        return _check(found, n)
    if last_err:
        raise last_err
    raise VerdictError("neither a JSON verdict nor 'System N score; explanation' lines")
