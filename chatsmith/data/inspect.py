"""`chatsmith data inspect FILE`: see rows exactly as training will, with the tokens that carry loss marked.

Trainable tokens are coloured in a terminal and wrapped in ⟦ ⟧ when the output is piped (or --color never is
given with --markers); then token-length statistics over the file and, with --plot, a PNG histogram.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from chatsmith.data.lengths import load_template_and_tokenizer
from chatsmith.data.problems import REASONS, RowProblem
from chatsmith.data.sources import SourceSpec, read_source
from chatsmith.outputs import atomic_file
from chatsmith.templates import IGNORE_INDEX, Rendered

OPEN, CLOSE = "⟦", "⟧"
GREEN, RESET = "\x1b[1;32m", "\x1b[0m"


def highlight(r: Rendered, tokenizer: Any, color: bool) -> str:
    """The rendered ids decoded run by run; trainable runs coloured (color) or wrapped in ⟦ ⟧.
    Runs follow the template's own chunk boundaries, so each decodes to whole characters."""
    out: list[str] = []
    run: list[int] = []
    run_trainable = None
    for tid, label in zip(r.input_ids, r.labels):
        t = label != IGNORE_INDEX
        if run and t != run_trainable:
            out.append(_run(tokenizer, run, run_trainable, color))
            run = []
        run.append(tid)
        run_trainable = t
    if run:
        out.append(_run(tokenizer, run, run_trainable, color))
    return "".join(out)


def _run(tokenizer: Any, ids: list[int], trainable: bool, color: bool) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if not trainable:
        return text
    return f"{GREEN}{text}{RESET}" if color else f"{OPEN}{text}{CLOSE}"


def percentile(sorted_vals: list[int], q: float) -> int:
    if not sorted_vals:
        return 0
    k = min(len(sorted_vals) - 1, max(0, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def length_stats(lengths: list[int], max_length: int | None = None) -> dict[str, Any]:
    s = sorted(lengths)
    if not s:
        return {"rows": 0}
    out = {"rows": len(s), "min": s[0], "mean": round(sum(s) / len(s), 1), "p50": percentile(s, 50),
           "p90": percentile(s, 90), "p95": percentile(s, 95), "p99": percentile(s, 99), "max": s[-1],
           "total": sum(s)}
    if max_length:
        out["over_max_length"] = sum(1 for x in s if x > max_length)
    return out


def plot_histogram(lengths: list[int], path: str | Path, *, title: str = "", max_length: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#3b7dd8", edgecolor="white")
    if max_length:
        ax.axvline(max_length, color="#d83b3b", linestyle="--", label=f"max length {max_length}")
        ax.legend()
    ax.set_xlabel("tokens per rendered row")
    ax.set_ylabel("rows")
    ax.set_title(title or "token lengths")
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
    return path


def configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a data file in any supported format (or prepare's train.jsonl)")
    p.add_argument("--format", help="force a reader (default: auto-detect)")
    p.add_argument("--template", help="prompt template (default: the model's, as training picks it)")
    p.add_argument("--model", default=None, help="model whose tokenizer to use (default smollm2)")
    p.add_argument("-n", type=int, default=3, help="how many rendered samples to show")
    p.add_argument("--max-length", type=int, help="also count rows over this many tokens")
    p.add_argument("--max-rows", type=int, default=20000, help="rows to measure for the statistics")
    p.add_argument("--plot", help="write a PNG histogram of token lengths here")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour trainable tokens (auto: when stdout is a terminal; else ⟦ ⟧ markers)")


def run_inspect(args: argparse.Namespace) -> int:
    template, tok = load_template_and_tokenizer(args.template, args.model)
    fmt, rows = read_source(SourceSpec(Path(args.file), args.format))
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(f"{args.file}: format {fmt.name}, template {template.name}; trainable tokens "
          + ("in green" if color else f"between {OPEN} and {CLOSE}"))
    lengths: list[int] = []
    trainable: list[int] = []
    problems: Counter = Counter()
    shown = 0
    for n, conv in rows:
        if len(lengths) + sum(problems.values()) >= args.max_rows:
            break
        if isinstance(conv, RowProblem):
            problems[conv.reason] += 1
            continue
        r = template.render(conv, tok)
        lengths.append(len(r.input_ids))
        trainable.append(sum(1 for x in r.labels if x != IGNORE_INDEX))
        if shown < args.n:
            shown += 1
            print(f"\n--- sample {shown} (line {n}, {len(r.input_ids)} tokens, {trainable[-1]} trainable) ---")
            print(highlight(r, tok, color))
    stats = length_stats(lengths, args.max_length)
    print(f"\nrows measured: {stats['rows']}" + (f" (first {args.max_rows})" if stats["rows"] >= args.max_rows else ""))
    if lengths:
        keys = ("min", "mean", "p50", "p90", "p95", "p99", "max")
        print("tokens per row: " + ", ".join(f"{k} {stats[k]}" for k in keys))
        print(f"trainable tokens per row: mean {sum(trainable) / len(trainable):.1f}, "
              f"{100 * sum(trainable) / max(1, stats['total']):.1f}% of all tokens")
        if args.max_length:
            print(f"over --max-length {args.max_length}: {stats['over_max_length']} rows")
    if problems:
        print("rows prepare would drop: " + ", ".join(f"{REASONS[k]} {v}" for k, v in problems.items()))
    if args.plot:
        if not lengths:
            print("no rows to plot", file=sys.stderr)
        else:
            path = plot_histogram(lengths, args.plot, title=Path(args.file).name, max_length=args.max_length)
            print(f"wrote {path}")
    return 0
