"""`chatsmith eval report --answers DIR`: Markdown, HTML and a PNG bar chart of the scores per category and system.

Laid out like DreamerGPT's tables: one row per category (with its suite file and item count), one column per
system, the category score on a 0-100 scale (the mean 0-10 judge score x 10, so 10 items x 10 points = 100 as in
the seed), the best of each row starred. With K judge samples each cell shows mean ± the standard deviation of
the category score across the K samples, so a reader can tell real differences from judge noise. Every failed or
unparsable judgment is counted in the row it belongs to and in the summary line; automatic metrics and human
ratings (when present) get tables of their own.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path
from typing import Any

from chatsmith.eval.answer import load_answers, read_jsonl_lenient
from chatsmith.eval.metrics import (CODE_FIGURES, CONTEXT_FIGURES, DEFINITIONS, FEW_ITEMS, LOWER_IS_BETTER,
                                     score_automatic)
from chatsmith.eval.sandbox import NOT_ALLOWED
from chatsmith.eval.suite import CATEGORY_TITLES
from chatsmith.outputs import atomic_file, atomic_write_text

Table = dict[str, Any]  # {"title", "columns", "rows": [[cells]], "notes": [str]}


def _category_order(cats: list[str]) -> list[str]:
    known = list(CATEGORY_TITLES)
    return sorted(set(cats), key=lambda c: (known.index(c) if c in known else len(known), c))


def _fmt(v: float | None, spread: float | None = None) -> str:
    if v is None:
        return "--"
    s = f"{v:.1f}".rstrip("0").rstrip(".")
    if spread is not None:
        s += f" ± {spread:.1f}"
    return s


def _star_row(values: list[float | None], cells: list[str]) -> list[str]:
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return cells
    best = max(present)
    return [c + "*" if v is not None and abs(v - best) < 1e-9 else c for v, c in zip(values, cells)]


def judge_table(d: Path, mode: str, items, systems: list[str], name: str | None = None
                ) -> tuple[Table, dict] | None:
    """The seed's layout for one judge: rows = categories, columns = systems, 0-100, best starred."""
    from chatsmith.eval.judge import judged, summary_path as judge_summary_path

    files = judged(d, mode)
    path = files.get(name) if name else d / f"judgments-{mode}.jsonl"
    rows, _ = read_jsonl_lenient(path) if path else ([], 0)
    if not rows:
        return None
    legacy = path.name == f"judgments-{mode}.jsonl"
    summary_path = judge_summary_path(d, mode, None if legacy else name)
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    cat_of = {it.id: it.category for it in items}
    suite_of = {it.category: it.suite for it in items}
    n_items: dict[str, int] = {}
    for it in items:
        n_items[it.category] = n_items.get(it.category, 0) + 1
    # per (category, system, sample): item -> scores
    per: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    failed: dict[str, int] = {}
    for r in rows:
        cat = r.get("category") or cat_of.get(r["item"], "?")
        if r["status"] != "ok":
            failed[cat] = failed.get(cat, 0) + 1
            continue
        for s, v in r["scores"].items():
            per.setdefault((cat, s, r.get("sample", 0)), {}).setdefault(r["item"], []).append(float(v))
    samples = sorted({k[2] for k in per}) or [0]
    cats = _category_order([cat_of.get(r["item"], r.get("category", "?")) for r in rows])
    chart: dict[str, dict[str, tuple[float, float | None]]] = {}
    body = []
    for cat in cats:
        values, cells = [], []
        for s in systems:
            per_sample = []
            for k in samples:
                byitem = per.get((cat, s, k))
                if byitem:
                    per_sample.append(10 * statistics.mean(statistics.mean(v) for v in byitem.values()))
            if not per_sample:
                values.append(None)
                cells.append("--")
                continue
            mean = statistics.mean(per_sample)
            spread = statistics.stdev(per_sample) if len(per_sample) > 1 else None
            values.append(mean)
            cells.append(_fmt(mean, spread))
            chart.setdefault(cat, {})[s] = (mean, spread)
        body.append([CATEGORY_TITLES.get(cat, cat), f"{suite_of.get(cat, '')}.jsonl" if suite_of.get(cat) else "",
                     str(n_items.get(cat, 0)), *_star_row(values, cells), str(failed.get(cat, 0))])
    if len(cats) > 1:  # DreamerGPT sums per category; the overall row is the mean of the category scores
        overall = [statistics.mean(chart[c][s][0] for c in cats if s in chart.get(c, {}))
                   if any(s in chart.get(c, {}) for c in cats) else None for s in systems]
        body.append(["Overall (mean of categories)", "", str(len(items)),
                     *_star_row(overall, [_fmt(v) for v in overall]), str(sum(failed.values()))])
    total = len(rows)
    bad = sum(failed.values())
    kinds = summary.get("errors_by_kind") or {}
    notes = [f"Judge {name or 'judge'}: {summary.get('judge', '?')}; mode {mode}; {len(samples)} sample(s) per item"
             + (" (cells: mean ± std across samples)" if len(samples) > 1 else "") + ".",
             f"Judgments: {total} total, {total - bad} ok, "
             f"{sum(r['status'] == 'unparsable' for r in rows)} unparsable, "
             f"{sum(r['status'] == 'error' for r in rows)} failed calls"
             + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + ")" if kinds else "")
             + "; failures are counted per row, never dropped silently."]
    if summary.get("missing_answers"):
        notes.append(f"{summary['missing_answers']} answer(s) were missing or failed and were not judged.")
    if mode == "pairwise":
        notes.append(_pairwise_note(rows, systems))
    table = {"title": f"LLM judge ({mode}): {name or 'judge'}, score per category (0-100)",
             "judge": name or "judge", "mode": mode,
             "columns": ["Category", "Suite", "Items", *systems, "Failed judgments"], "rows": body, "notes": notes}
    return table, chart


def judge_tables_by_name(d: Path, items, systems: list[str]) -> tuple[list[Table], dict | None]:
    """One table per (mode, judge), as DreamerGPT prints a GPT-4 table and a GPT-3.5 table; where a mode has two
    or more judges, a table that puts them side by side follows (columns grouped per judge). The chart shows the
    first judge."""
    from chatsmith.eval.judge import judged

    tables: list[Table] = []
    chart: dict | None = None
    for mode in ("multi", "pairwise", "single"):
        per_judge = []
        for name in judged(d, mode):
            res = judge_table(d, mode, items, systems, name)
            if res:
                per_judge.append(res[0])
                chart = chart or res[1]
        tables += per_judge
        if len(per_judge) > 1:
            tables.append(side_by_side(per_judge, systems, mode))
    return tables, chart


def side_by_side(per_judge: list[Table], systems: list[str], mode: str) -> Table:
    """Judges next to each other: rows = categories, columns = JUDGE: SYSTEM; the best system starred within each
    judge's columns (the per-judge tables' stars, carried over)."""
    n = len(systems)
    first = per_judge[0]
    rows_by_cat: dict[str, list[str]] = {r[0]: [r[0], r[2]] for r in first["rows"]}
    for t in per_judge:
        for r in t["rows"]:
            rows_by_cat.setdefault(r[0], [r[0], r[2]])
    body = []
    for cat, head in rows_by_cat.items():
        cells = list(head)
        for t in per_judge:
            row = next((r for r in t["rows"] if r[0] == cat), None)
            cells += row[3:3 + n] if row else ["--"] * n
        body.append(cells)
    cols = ["Category", "Items", *[f"{t['judge']}: {s}" for t in per_judge for s in systems]]
    return {"title": f"Judges side by side ({mode}), score per category (0-100)", "columns": cols, "rows": body,
            "notes": ["Each judge's columns come from its own table above; `*` marks the best system per judge.",
                      "Judges: " + ", ".join(t["judge"] for t in per_judge) + "."], "group": len(systems)}


def _pairwise_note(rows: list[dict], systems: list[str]) -> str:
    wins = {s: [0, 0, 0] for s in systems}  # win, tie, loss
    for r in rows:
        if r["status"] != "ok" or len(r["order"]) != 2:
            continue
        a, b = r["order"]
        sa, sb = r["scores"][a], r["scores"][b]
        if sa == sb:
            wins[a][1] += 1
            wins[b][1] += 1
        else:
            w, l_ = (a, b) if sa > sb else (b, a)
            wins[w][0] += 1
            wins[l_][2] += 1
    parts = []
    for s, (w, t, l_) in wins.items():
        n = w + t + l_
        parts.append(f"{s} {w}-{t}-{l_}" + (f" (win rate {100 * (w + 0.5 * t) / n:.0f}%)" if n else ""))
    return "Pairwise wins-ties-losses (both orders counted): " + "; ".join(parts) + "."


def load_metrics(d: Path) -> dict | None:
    p = d / "metrics.json"
    if not p.is_file():
        return None
    m = json.loads(p.read_text(encoding="utf-8"))
    if "figures" not in m:  # written by an older version: say so rather than misread it
        from chatsmith.errors import ChatsmithError

        raise ChatsmithError(f"{p}: an older metrics format; rerun `chatsmith eval report --metrics`")
    return m


def _scale(figure: str, mean: float | None) -> float | None:
    return None if mean is None else mean * (1 if figure == "chrf" else 100)


def _n_cell(ns: list[int]) -> str:
    """Item count(s) of a row; marks a figure over fewer than FEW_ITEMS items."""
    text = (str(ns[0]) if len(set(ns)) == 1 else " / ".join(map(str, ns))) if ns else "0"
    return text + (f" (<{FEW_ITEMS})" if not ns or min(ns) < FEW_ITEMS else "")


def _figure_keys(m: dict) -> list[tuple[str, str]]:
    """(suite, figure) in run order of suites; within a suite cite, abstain, invented, other, tests, form, rest."""
    first = CONTEXT_FIGURES + CODE_FIGURES
    keys = list(dict.fromkeys((f["suite"] or f["category"], f["figure"]) for f in m["figures"]))
    suites = list(dict.fromkeys(k[0] for k in keys))
    return sorted(keys, key=lambda k: (suites.index(k[0]), first.index(k[1]) if k[1] in first else len(first), k[1]))


def _index(m: dict) -> dict[tuple[str, str, str], dict]:
    """(system, suite, figure) -> entry; a suite is named by its file stem (its category when it has none)."""
    return {(f["system"], f["suite"] or f["category"], f["figure"]): f for f in m["figures"]}


def _suites_with(m: dict, prefix: str) -> list[str]:
    return list(dict.fromkeys(f["suite"] or f["category"] for f in m["figures"] if f["figure"].startswith(prefix)))


def _unscored_notes(m: dict, prefix: str | None) -> list[str]:
    reasons: dict[str, int] = {}
    for f in m["figures"]:
        mine = f["figure"].startswith(prefix) if prefix else not f["figure"].startswith(("context.", "code."))
        if mine:
            for why, k in f.get("unscored_reasons", {}).items():
                key = f"{f['system']}, {f['suite'] or f['category']}: {why}"
                reasons[key] = max(reasons.get(key, 0), k)  # one item adds to several figures of a family
    if not reasons:
        return []
    return ["Unscored items (counted, not dropped; see metrics.jsonl): "
            + "; ".join(f"{k} x{v}" for k, v in sorted(reasons.items())) + "."]


def _few_note(rows: list[list[str]]) -> list[str]:
    if any(f"(<{FEW_ITEMS})" in c for r in rows for c in r):
        return [f"(<{FEW_ITEMS}): fewer than {FEW_ITEMS} items in this run: too few to tell systems apart."]
    return []


def context_table(m: dict, systems: list[str]) -> Table | None:
    """Closed context, one row per suite and system: cite | abstain | invented | other, with their item counts."""
    suites = _suites_with(m, "context.")
    if not suites:
        return None
    idx, body = _index(m), []
    for suite in suites:
        for s in systems:
            e = {f: idx.get((s, suite, f)) for f in ("context.cite", "context.abstain", "context.invented",
                                                     "context.other")}
            cite, una = e["context.cite"], e["context.abstain"]
            vals = [_fmt(_scale(f, x["mean"])) if x else "--" for f, x in e.items()]
            unscored = sum(x["unscored"] for x in (cite, una) if x)
            body.append([suite, s, vals[0], _n_cell([cite["n"]] if cite else []), *vals[1:],
                         _n_cell([una["n"]] if una else []), str(unscored)])
    notes = ["cite = " + DEFINITIONS["context.cite"] + ". abstain, invented and other split the unanswerable "
             "items: each scored one falls in exactly one class, so the three add up to 100%; invented and other: "
             "lower is better. Definitions: chatsmith/eval/metrics.py; every item's class and reason: "
             "metrics.jsonl.",
             "abstain = " + DEFINITIONS["context.abstain"] + "; invented = " + DEFINITIONS["context.invented"] + "."]
    notes += _few_note(body) + _unscored_notes(m, "context.")
    return {"title": "Closed context: cite / abstain / invented (%)",
            "columns": ["Suite", "System", "cite", "n answerable", "abstain", "invented", "other",
                        "n unanswerable", "Unscored"], "rows": body, "notes": notes}


def code_table(m: dict, systems: list[str]) -> Table | None:
    """Code, one row per suite and system: unit tests passed beside form (no fences when asked, parses)."""
    suites = _suites_with(m, "code.")
    if not suites:
        return None
    idx, body = _index(m), []
    for suite in suites:
        for s in systems:
            t, f = idx.get((s, suite, "code.tests")), idx.get((s, suite, "code.form"))
            if t is None or f is None:
                continue
            body.append([suite, s, _fmt(_scale("code.tests", t["mean"])), _fmt(_scale("code.form", f["mean"])),
                         _n_cell([t["n"]]), str(t["unscored"])])
    notes = ["tests passed = " + DEFINITIONS["code.tests"] + " (the only pass); form ok = "
             + DEFINITIONS["code.form"] + " (reported on its own, never a pass)."]
    notes += _few_note(body) + _unscored_notes(m, "code.")
    if any(NOT_ALLOWED in f.get("unscored_reasons", {}) for f in m["figures"]):
        notes.append("Code execution was not allowed: opt in with --allow-code-execution to run the tests.")
    if (m.get("code_execution") or {}).get("isolation"):
        notes.append(f"Model-written code ran isolated by: {m['code_execution']['isolation']}.")
    return {"title": "Code: unit tests passed / form (%)",
            "columns": ["Suite", "System", "tests passed", "form ok", "Items", "Unscored"], "rows": body,
            "notes": notes}


def metrics_table(m: dict, systems: list[str]) -> Table | None:
    """Every other automatic metric: one row per category, suite and metric, one column per system."""
    rows = [f for f in m["figures"] if not f["figure"].startswith(("context.", "code."))]
    if not rows:
        return None
    idx = _index(m)
    keys = list(dict.fromkeys((f["category"], f["suite"] or f["category"], f["figure"]) for f in rows))
    order = _category_order([k[0] for k in keys])
    keys.sort(key=lambda k: order.index(k[0]))
    body = []
    for cat, suite, mt in keys:
        es = [idx.get((s, suite, mt)) for s in systems]
        vals = [_scale(mt, e["mean"]) if e else None for e in es]
        body.append([CATEGORY_TITLES.get(cat, cat), suite, mt, _n_cell([e["n"] for e in es if e]),
                     *_star_row(vals, [_fmt(v) for v in vals]),
                     str(max((e["unscored"] for e in es if e), default=0))])
    notes = ["Accuracy in % (chrF: 0-100)."] + _few_note(body) + _unscored_notes(m, None)
    if m.get("failed_answers"):
        notes.append(f"{m['failed_answers']} answer(s) missing or failed: counted as unscored, not as wrong.")
    return {"title": "Automatic metrics", "columns": ["Category", "Suite", "Metric", "Items", *systems, "Unscored"],
            "rows": body, "notes": notes}


def skill_table(m: dict, systems: list[str]) -> str:
    """The per-skill figures as plain text, systems side by side, each row with its item count (printed by
    quickstart and bench/outcome.py)."""
    idx = _index(m)
    keys = _figure_keys(m)
    lines = [f"{'skill':<31} {'suite':<22} {'items':>10} " + " ".join(f"{s:>9}" for s in systems)]
    few = False
    for suite, fig in keys:
        es = [idx.get((s, suite, fig)) for s in systems]
        ns = [e["n"] for e in es if e]
        few |= not ns or min(ns) < FEW_ITEMS
        cells = []
        for e in es:
            v = _scale(fig, e["mean"]) if e else None
            cells.append(f"{'--' if v is None else f'{v:.1f}' + ('' if fig == 'chrf' else '%'):>9}")
        name = fig + (" (lower=better)" if fig in LOWER_IS_BETTER else "")
        lines.append(f"{name:<31} {suite[:22]:<22} {_n_cell(ns):>10} " + " ".join(cells))
    if m.get("unscored"):
        by: dict[str, int] = {}
        for u in m["unscored"]:
            by[f"{u['system']}: {u['unscored']}"] = by.get(f"{u['system']}: {u['unscored']}", 0) + 1
        lines.append(f"unscored: {len(m['unscored'])} item answer(s), counted per skill, not dropped: "
                     + "; ".join(f"{k} x{v}" for k, v in sorted(by.items())))
    if few:
        lines.append(f"(<{FEW_ITEMS}): fewer than {FEW_ITEMS} items in this run: too few to tell systems apart.")
    return "\n".join(lines)


def human_table(d: Path, items, systems: list[str]) -> Table | None:
    p = d / "human.json"
    if not p.is_file():
        return None
    h = json.loads(p.read_text(encoding="utf-8"))
    cat_of = {**h.get("categories", {}), **{it.id: it.category for it in items}}
    by: dict[tuple[str, str], list[float]] = {}
    for s, per_item in h["scores"].items():
        for item, v in per_item.items():
            by.setdefault((cat_of.get(item, "?"), s), []).append(v)
    cols = [s for s in systems if s in h["scores"]] + [s for s in h["scores"] if s not in systems]
    body = []
    for cat in _category_order([c for c, _ in by]):
        vals = [10 * statistics.mean(by[(cat, s)]) if (cat, s) in by else None for s in cols]
        n = max((len(by.get((cat, s), [])) for s in cols), default=0)
        body.append([CATEGORY_TITLES.get(cat, cat), str(n), *_star_row(vals, [_fmt(v) for v in vals])])
    ag = h["agreement"]
    notes = [f"Mean of {len(h['raters'])} rater(s), as DreamerGPT does. Krippendorff's alpha (interval): "
             f"{ag['krippendorff_alpha_interval']}."]
    for pr in ag["pairs"]:
        notes.append(f"{Path(pr['raters'][0]).name} vs {Path(pr['raters'][1]).name}: Pearson {pr['pearson']}, "
                     f"Spearman {pr['spearman']}, weighted kappa {pr['weighted_kappa']} (n={pr['n']}).")
    for jname, jc in (h.get("judge_correlations") or
                      ({"judge": h["judge_correlation"]} if h.get("judge_correlation") else {})).items():
        notes.append(f"Judge {jname} vs human: Pearson {jc['pearson']}, Spearman {jc['spearman']} (n={jc['n']}).")
    return {"title": "Human ratings, score per category (0-100)", "columns": ["Category", "Items", *cols],
            "rows": body, "notes": notes}


def to_markdown(tables: list[Table], title: str) -> str:
    out = [f"# {title}", ""]
    for t in tables:
        out += [f"## {t['title']}", "", "| " + " | ".join(t["columns"]) + " |",
                "|" + "---|" * len(t["columns"])]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t["rows"]]
        out += [""] + [f"- {n}" for n in t["notes"]] + [""]
    out.append("`*` marks the best system in each row.")
    return "\n".join(out) + "\n"


def to_html(tables: list[Table], title: str, chart: str | list[str] | None) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}th{background:#eee}.best{font-weight:bold;background:#e6f4e6}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    for c in [chart] if isinstance(chart, str) else chart or []:
        parts.append(f"<img src='{esc(c)}' alt='{esc(Path(c).stem)}' style='max-width:100%'>")
    for t in tables:
        parts.append(f"<h2>{esc(t['title'])}</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in t["columns"])
                     + "</tr>")
        for row in t["rows"]:
            cells = [f"<td class='best'>{esc(c)}</td>" if c.endswith("*") else f"<td>{esc(c)}</td>" for c in row]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table><ul>" + "".join(f"<li>{esc(n)}</li>" for n in t["notes"]) + "</ul>")
    parts.append("<p>* marks the best system in each row.</p></body></html>")
    return "\n".join(parts) + "\n"


def bar_chart(chart: dict[str, dict[str, tuple[float, float | None]]], systems: list[str], path: Path,
              title: str, ylabel: str = "score (0-100)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(chart)
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cats) + 2), 4.5))
    for j, s in enumerate(systems):
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(cats))]
        ys = [chart[c].get(s, (0.0, None))[0] for c in cats]
        errs = [chart[c].get(s, (0.0, None))[1] or 0.0 for c in cats]
        bars = ax.bar(xs, ys, width, label=s, yerr=errs if any(errs) else None, capsize=3)
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small")  # a 0 bar is a score, not a missing one
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([c for c in cats], rotation=30, ha="right", fontsize="small")
    ax.set_ylim(0, 108)  # room for the value labels
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def write_report(answers_dir: str | Path, output_dir: str | Path | None = None, title: str = "chatsmith eval"
                 ) -> dict[str, Path]:
    """Write report.md, report.html and scores.png (when there are scores) for an answers directory; returns
    their paths. Judge tables for each mode judged, then automatic metrics, then human ratings."""
    d = Path(answers_dir)
    out = Path(output_dir) if output_dir else d / "report"
    items, answers = load_answers(d)
    systems = list(answers)
    tables: list[Table] = []
    judge_tables, chart_data = judge_tables_by_name(d, items, systems)
    tables += judge_tables
    m = load_metrics(d)
    metric_chart = None
    if m:
        tables += [t for t in (context_table(m, systems), code_table(m, systems), metrics_table(m, systems)) if t]
        metric_chart = _metric_chart(m, systems)
    ht = human_table(d, items, systems)
    if ht:
        tables.append(ht)
    if not tables:
        from chatsmith.errors import ChatsmithError

        raise ChatsmithError(f"{d}: nothing to report; run `chatsmith eval judge` or compute metrics first")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    charts = []
    if chart_data:
        paths["png"] = out / "scores.png"
        bar_chart(chart_data, systems, paths["png"], title)
        charts.append("scores.png")
    if metric_chart:  # every figure its own bars (cite, abstain, invented side by side), never one average
        name = "metrics.png" if charts else "scores.png"
        paths["metrics_png" if charts else "png"] = out / name
        bar_chart(metric_chart, systems, out / name, f"{title}: automatic metrics",
                  ylabel="% of items (invented/other: lower is better)")
        charts.append(name)
    atomic_write_text(paths["markdown"], to_markdown(tables, title))
    atomic_write_text(paths["html"], to_html(tables, title, charts))
    return paths


def _metric_chart(m: dict, systems: list[str]) -> dict:
    """One bar group per figure and suite, labelled with its item count; chrF (0-100) is left out of a % chart."""
    chart: dict[str, dict[str, tuple[float, float | None]]] = {}
    idx = _index(m)
    keys = [k for k in _figure_keys(m) if k[1] != "chrf"]
    for suite, fig in keys:
        ns = [idx[(s, suite, fig)]["n"] for s in systems if (s, suite, fig) in idx]
        label = f"{fig}{' (lower=better)' if fig in LOWER_IS_BETTER else ''}\n{suite} n={_n_cell(ns)}"
        for s in systems:
            e = idx.get((s, suite, fig))
            if e and e["mean"] is not None:
                chart.setdefault(label, {})[s] = (100 * e["mean"], None)
    return chart


def configure_report(p) -> None:
    p.add_argument("--answers", required=True, help="answers directory (with judgments/metrics/human.json)")
    p.add_argument("--output", help="report directory (default: ANSWERS/report)")
    p.add_argument("--metrics", action="store_true", help="compute the automatic metrics first")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="run the answers' code against the tests (isolated; also CHATSMITH_ALLOW_CODE_EXECUTION=1); "
                        "without it code items are reported unscored")
    p.add_argument("--title", default="chatsmith eval")


def run_report(args) -> int:
    mpath = Path(args.answers) / "metrics.json"
    if args.metrics or not mpath.is_file() or "figures" not in json.loads(mpath.read_text(encoding="utf-8")):
        score_automatic(args.answers, allow_code_execution=args.allow_code_execution or None)
    paths = write_report(args.answers, args.output, args.title)
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0
