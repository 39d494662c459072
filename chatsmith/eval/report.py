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

from chatsmith.eval.answer import load_answers, read_jsonl_lenient, write_atomic
from chatsmith.eval.suite import CATEGORY_TITLES

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


def metrics_table(d: Path, systems: list[str]) -> Table | None:
    p = d / "metrics.json"
    if not p.is_file():
        return None
    m = json.loads(p.read_text(encoding="utf-8"))
    cats = _category_order([c for s in m["systems"].values() for c in s])
    body = []
    for cat in cats:
        names = sorted({mt for s in m["systems"].values() for mt in s.get(cat, {})})
        for mt in names:
            vals = []
            for s in systems:
                e = m["systems"].get(s, {}).get(cat, {}).get(mt)
                vals.append(None if e is None else e["mean"] * (1 if mt == "chrf" else 100))
            n = max((m["systems"].get(s, {}).get(cat, {}).get(mt, {}).get("n", 0) for s in systems), default=0)
            body.append([CATEGORY_TITLES.get(cat, cat), mt, str(n), *_star_row(vals, [_fmt(v) for v in vals])])
    notes = ["Accuracy in % (chrF: 0-100). code = unit tests pass in the sandbox; context = cites the right "
             "source when answerable and refuses when the context lacks the answer."]
    if m.get("failed_answers"):
        notes.append(f"{m['failed_answers']} answer(s) missing or failed: not scored.")
    return {"title": "Automatic metrics", "columns": ["Category", "Metric", "Items", *systems], "rows": body,
            "notes": notes}


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


def to_html(tables: list[Table], title: str, chart: str | None) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}th{background:#eee}.best{font-weight:bold;background:#e6f4e6}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    if chart:
        parts.append(f"<img src='{esc(chart)}' alt='scores per category' style='max-width:100%'>")
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
              title: str) -> None:
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
        ax.bar(xs, ys, width, label=s, yerr=errs if any(errs) else None, capsize=3)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([c for c in cats], rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (0-100)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


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
    mt = metrics_table(d, systems)
    if mt:
        tables.append(mt)
        if chart_data is None:
            chart_data = _metric_chart(d, systems)
    ht = human_table(d, items, systems)
    if ht:
        tables.append(ht)
    if not tables:
        from chatsmith.errors import ChatsmithError

        raise ChatsmithError(f"{d}: nothing to report; run `chatsmith eval judge` or compute metrics first")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    chart_name = None
    if chart_data:
        paths["png"] = out / "scores.png"
        bar_chart(chart_data, systems, paths["png"], title)
        chart_name = "scores.png"
    write_atomic(paths["markdown"], to_markdown(tables, title))
    write_atomic(paths["html"], to_html(tables, title, chart_name))
    return paths


def _metric_chart(d: Path, systems: list[str]) -> dict:
    m = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    chart: dict[str, dict[str, tuple[float, float | None]]] = {}
    for s in systems:
        for cat, ms in m["systems"].get(s, {}).items():
            vals = [e["mean"] * (1 if mt == "chrf" else 100) for mt, e in ms.items()]
            chart.setdefault(cat, {})[s] = (statistics.mean(vals), None)
    return {c: chart[c] for c in _category_order(list(chart))}


def configure_report(p) -> None:
    p.add_argument("--answers", required=True, help="answers directory (with judgments/metrics/human.json)")
    p.add_argument("--output", help="report directory (default: ANSWERS/report)")
    p.add_argument("--metrics", action="store_true", help="compute the automatic metrics first")
    p.add_argument("--title", default="chatsmith eval")


def run_report(args) -> int:
    if args.metrics or not (Path(args.answers) / "metrics.json").is_file():
        from chatsmith.eval.metrics import score_automatic

        score_automatic(args.answers)
    paths = write_report(args.answers, args.output, args.title)
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0
