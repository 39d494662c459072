"""`chatsmith eval human --ratings a.csv b.csv [--answers DIR]`: merge human raters as DreamerGPT does (the mean
of the raters' 0-10 scores), measure how much they agree, and how well the LLM judge agrees with them.

`--export-sheet DIR --raters N --answers DIR` writes blind sheets to fill first (chatsmith.eval.sheets); a
filled sheet is read back through its key. Otherwise a ratings CSV is either long (columns id, system, score
[, category]) or wide (column id [, category] and one column per system). Agreement: Pearson and Spearman per
rater pair, Cohen's quadratically weighted kappa per pair (scores rounded to integers 0-10), and Krippendorff's
alpha (interval) over all raters. With --answers,
each judge's mean score per (item, system) is correlated with the human mean, and the merged ratings are saved
to DIR/human.json for `chatsmith eval report`.
"""

from __future__ import annotations

import csv
import json
import math
from itertools import combinations
from pathlib import Path
from typing import Any

from chatsmith.errors import ChatsmithError
from chatsmith.eval.sheets import export_sheets, is_sheet, load_key, parse_score, read_sheet

Key = tuple[str, str]  # (item id, system)


def read_ratings(path: str | Path, key: dict | None = None) -> tuple[dict[Key, float], dict[str, str]]:
    """-> ({(item, system): score}, {item: category}). Errors name the file, line and column. A blind sheet
    written by --export-sheet (columns sheet, slot, ...) is unblinded with `key` (chatsmith.eval.sheets)."""
    p = Path(path)
    if not p.is_file():
        raise ChatsmithError(f"{p}: no such ratings file")
    scores: dict[Key, float] = {}
    cats: dict[str, str] = {}
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        if is_sheet(cols):
            return read_sheet(p, reader, key)
        if "id" not in cols:
            raise ChatsmithError(f"{p}:1: no 'id' column (expected id,system,score or id,<system>,<system>...)")
        long = "system" in cols and "score" in cols
        sys_cols = [] if long else [c for c in cols if c not in ("id", "category")]
        if not long and not sys_cols:
            raise ChatsmithError(f"{p}:1: no score columns (expected id,system,score or id,<system>,...)")
        for line, row in enumerate(reader, 2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            item = row["id"]
            if not item:
                raise ChatsmithError(f"{p}:{line}: empty 'id'")
            if row.get("category"):
                cats[item] = row["category"]
            pairs = [(row["system"], row["score"], "score")] if long else [(c, row.get(c, ""), c) for c in sys_cols]
            for system, raw, col in pairs:
                if raw == "":
                    continue  # a blank cell is "not rated", not zero
                scores[(item, system)] = parse_score(raw, f"{p}:{line}", col)
    if not scores:
        raise ChatsmithError(f"{p}: no ratings")
    return scores, cats


# ---- statistics (numpy only) -------------------------------------------------------------------------
def pearson(x: list[float], y: list[float]) -> float | None:
    import numpy as np

    if len(x) < 2:
        return None
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(x: list[float]) -> list[float]:
    """Average ranks (ties share the mean rank), as Spearman needs."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    return pearson(_ranks(x), _ranks(y)) if len(x) >= 2 else None


def weighted_kappa(x: list[float], y: list[float], lo: int = 0, hi: int = 10) -> float | None:
    """Cohen's kappa with quadratic weights on integer scores lo..hi."""
    import numpy as np

    if not x:
        return None
    k = hi - lo + 1
    a = np.clip(np.rint(x).astype(int) - lo, 0, k - 1)
    b = np.clip(np.rint(y).astype(int) - lo, 0, k - 1)
    obs = np.zeros((k, k))
    for i, j in zip(a, b):
        obs[i, j] += 1
    obs /= obs.sum()
    exp = np.outer(obs.sum(1), obs.sum(0))
    idx = np.arange(k)
    w = (idx[:, None] - idx[None, :]) ** 2 / (k - 1) ** 2
    denom = (w * exp).sum()
    return None if denom == 0 else float(1 - (w * obs).sum() / denom)


def krippendorff_alpha(units: list[list[float]]) -> float | None:
    """Interval alpha: 1 - D_observed / D_expected over units rated by 2+ raters (missing ratings allowed)."""
    units = [u for u in units if len(u) >= 2]
    n = sum(len(u) for u in units)
    if n < 2:
        return None
    d_o = sum(sum((a - b) ** 2 for a in u for b in u) / (len(u) - 1) for u in units) / n
    values = [v for u in units for v in u]
    d_e = sum((a - b) ** 2 for a in values for b in values) / (n * (n - 1))
    return None if d_e == 0 else float(1 - d_o / d_e)


def _r(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 4)


def judge_means(answers_dir: Path, mode: str = "multi", path: Path | None = None) -> dict[Key, float]:
    from chatsmith.eval.answer import read_jsonl_lenient
    from chatsmith.eval.judge import judgments_path

    rows, _ = read_jsonl_lenient(path or judgments_path(answers_dir, mode))
    acc: dict[Key, list[float]] = {}
    for r in rows:
        if r.get("status") == "ok":
            for system, s in (r.get("scores") or {}).items():
                acc.setdefault((r["item"], system), []).append(float(s))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def merge_ratings(paths: list[str | Path], answers_dir: str | Path | None = None, mode: str = "multi"
                  ) -> dict[str, Any]:
    """Merge 2+ raters' CSVs; agreement statistics; judge-human correlation when `answers_dir` has judgments.
    Returns (and with answers_dir, writes DIR/human.json) the merged result."""
    if len(paths) < 1:
        raise ChatsmithError("--ratings needs at least one CSV (two or more to measure agreement)")
    key = load_key(answers_dir) if answers_dir is not None else None
    raters, cats = [], {}
    for p in paths:
        s, c = read_ratings(p, key)
        raters.append(s)
        cats.update(c)
    keys = sorted(set().union(*[r.keys() for r in raters]))
    merged = {k: sum(r[k] for r in raters if k in r) / sum(k in r for r in raters) for k in keys}
    pairs = []
    for (i, a), (j, b) in combinations(enumerate(raters), 2):
        common = sorted(set(a) & set(b))
        x, y = [a[k] for k in common], [b[k] for k in common]
        pairs.append({"raters": [str(paths[i]), str(paths[j])], "n": len(common), "pearson": _r(pearson(x, y)),
                      "spearman": _r(spearman(x, y)), "weighted_kappa": _r(weighted_kappa(x, y)),
                      "mean_abs_diff": _r(sum(abs(p - q) for p, q in zip(x, y)) / len(x)) if x else None})
    alpha = krippendorff_alpha([[r[k] for r in raters if k in r] for k in keys])
    out: dict[str, Any] = {
        "raters": [str(p) for p in paths], "n_ratings": len(keys),
        "single_rater": sum(sum(k in r for r in raters) == 1 for k in keys),
        "agreement": {"pairs": pairs, "krippendorff_alpha_interval": _r(alpha)},
        "scores": {}, "categories": cats,
    }
    for (item, system), v in merged.items():
        out["scores"].setdefault(system, {})[item] = v
    if answers_dir is not None:
        d = Path(answers_dir)
        from chatsmith.eval.answer import load_answers

        items, _ = load_answers(d)
        for it in items:
            out["categories"].setdefault(it.id, it.category)
        unknown = sorted({k[0] for k in keys} - {it.id for it in items})
        out["unknown_items"] = unknown
        from chatsmith.eval.judge import judged

        out["judge_correlations"] = {}
        for name, path in judged(d, mode).items():  # each judge against the human mean
            jm = judge_means(d, mode, path)
            common = sorted(set(jm) & set(merged))
            x, y = [jm[k] for k in common], [merged[k] for k in common]
            out["judge_correlations"][name] = {"mode": mode, "n": len(common), "pearson": _r(pearson(x, y)),
                                               "spearman": _r(spearman(x, y))}
        first = next(iter(out["judge_correlations"].values()), None)
        out["judge_correlation"] = first or {"mode": mode, "n": 0, "pearson": None, "spearman": None}
        from chatsmith.outputs import atomic_write_text

        atomic_write_text(d / "human.json", json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return out


def configure_human(p) -> None:
    p.add_argument("--ratings", nargs="+", metavar="CSV",
                   help="one CSV per rater: a filled sheet from --export-sheet, id,system,score (long) or "
                        "id,<system>,<system>... (wide)")
    p.add_argument("--export-sheet", metavar="DIR",
                   help="write blind rating sheets (one CSV per rater, systems hidden, order shuffled per item) into "
                        "the new directory DIR; the key goes to ANSWERS/human_key.json")
    p.add_argument("--raters", type=int, default=2, help="sheets to write with --export-sheet (default 2)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed for --export-sheet")
    p.add_argument("--answers", help="answers directory: correlate with its judges and save human.json there "
                                     "(required with --export-sheet and to read sheets back)")
    p.add_argument("--mode", default="multi", choices=["multi", "pairwise", "single"],
                   help="which judgments to correlate with")


def run_human(args) -> int:
    if args.export_sheet:
        if args.ratings or not args.answers:
            raise ChatsmithError("--export-sheet DIR needs --answers ANSWERS and no --ratings")
        paths = export_sheets(args.answers, args.export_sheet, args.raters, args.seed)
        print(f"{len(paths)} rating sheet(s): " + ", ".join(str(p) for p in paths))
        print(f"key (keep it from the raters): {Path(args.answers) / 'human_key.json'}")
        return 0
    if not args.ratings:
        raise ChatsmithError("give --ratings CSV... (filled sheets) or --export-sheet DIR")
    out = merge_ratings(args.ratings, args.answers, args.mode)
    print(f"{len(out['raters'])} rater(s), {out['n_ratings']} rated answers "
          f"({out['single_rater']} rated by one rater only)")
    for pr in out["agreement"]["pairs"]:
        print(f"  {pr['raters'][0]} vs {pr['raters'][1]}: n={pr['n']} pearson={pr['pearson']} "
              f"spearman={pr['spearman']} weighted kappa={pr['weighted_kappa']} |diff|={pr['mean_abs_diff']}")
    print(f"Krippendorff's alpha (interval): {out['agreement']['krippendorff_alpha_interval']}")
    if "judge_correlation" in out:
        for name, jc in (out.get("judge_correlations") or {"judge": out["judge_correlation"]}).items():
            print(f"judge vs human ({jc['mode']}): n={jc['n']} pearson={jc['pearson']} "
                  f"spearman={jc['spearman']} (judge {name})")
        if out.get("unknown_items"):
            print(f"warning: {len(out['unknown_items'])} rated item id(s) not in the suite: "
                  + ", ".join(out["unknown_items"][:5]))
        print(f"written: {Path(args.answers) / 'human.json'}")
    return 0
