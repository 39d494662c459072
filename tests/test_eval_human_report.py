"""Human ratings (merging, agreement statistics, judge correlation) and the report files, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatsmith.errors import ChatsmithError
from chatsmith.eval.human import (krippendorff_alpha, merge_ratings, pearson, read_ratings, spearman,
                                  weighted_kappa)
from chatsmith.eval.report import write_report


def test_agreement_statistics_on_known_values():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)   # monotone, not linear
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)              # ties share ranks
    assert weighted_kappa([0, 5, 10, 7], [0, 5, 10, 7]) == pytest.approx(1.0)
    # one point apart on a 0-10 scale is almost agreement with quadratic weights; reversed is disagreement
    assert weighted_kappa([2, 4, 6, 8], [3, 5, 7, 9]) > 0.8
    assert weighted_kappa([0, 10, 0, 10], [10, 0, 10, 0]) < 0
    assert krippendorff_alpha([[1, 1], [5, 5], [9, 9]]) == pytest.approx(1.0)
    # Krippendorff's own interval example would need a library; check the defining identity instead:
    # alpha = 1 - D_o/D_e with D_o from within-unit pairs and D_e from all pairs
    units = [[1, 2], [3, 3], [8, 6]]
    values = [1, 2, 3, 3, 8, 6]
    d_o = (2 * 1 + 0 + 2 * 4) / 6
    d_e = sum((a - b) ** 2 for a in values for b in values) / (6 * 5)
    assert krippendorff_alpha(units) == pytest.approx(1 - d_o / d_e)


def _answers_dir(tmp_path: Path, samples: int = 2) -> Path:
    """An answers directory with judgments as `chatsmith eval answer` + `judge` write them."""
    d = tmp_path / "run"
    (d / "answers").mkdir(parents=True)
    items = [{"id": f"qa-{i}", "category": "qa", "prompt": f"q{i}", "suite": "01qa"} for i in range(3)] + \
            [{"id": f"math-{i}", "category": "math", "prompt": f"m{i}", "answer": i, "suite": "09math"}
             for i in range(2)]
    (d / "suite.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (d / "systems.json").write_text(json.dumps({"base": "smollm2", "tuned": "smollm2+lora"}))
    for s in ("base", "tuned"):
        (d / "answers" / f"{s}.jsonl").write_text("".join(
            json.dumps({"id": x["id"], "category": x["category"], "system": s,
                        "answer": f"the answer is {1 if s == 'tuned' else 7}"}) + "\n" for x in items))
    rows = []
    for k in range(samples):
        for x in items:
            if x["id"] == "qa-2" and k == 0:
                rows.append({"item": x["id"], "category": "qa", "sample": k, "order": ["base", "tuned"],
                             "mode": "multi", "status": "unparsable", "error": "no score", "raw": "hmm"})
                continue
            rows.append({"item": x["id"], "category": x["category"], "sample": k, "order": ["base", "tuned"],
                         "mode": "multi", "status": "ok", "scores": {"base": 4 + k, "tuned": 8 - k},
                         "explanations": {"base": "", "tuned": ""}})
    (d / "judgments-multi.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "judge-multi.json").write_text(json.dumps({"judge": "local:smollm2", "errors_by_kind": {"unparsable": 1}}))
    return d


def test_human_ratings_merge_long_and_wide_csvs_and_correlate_with_the_judge(tmp_path, cli):
    d = _answers_dir(tmp_path)
    a = tmp_path / "a.csv"
    a.write_text("id,system,score\nqa-0,base,4\nqa-0,tuned,8\nqa-1,base,5\nqa-1,tuned,7\nmath-0,base,3\n")
    b = tmp_path / "b.csv"
    b.write_text("id,category,base,tuned\nqa-0,qa,6,9\nqa-1,qa,4,\nmath-0,math,3,10\n")
    sa, _ = read_ratings(a)
    sb, cats = read_ratings(b)
    assert sa[("qa-1", "tuned")] == 7 and ("qa-1", "tuned") not in sb and cats["qa-0"] == "qa"
    out = merge_ratings([a, b], d)
    assert out["scores"]["base"]["qa-0"] == 5.0 and out["scores"]["tuned"]["qa-1"] == 7.0  # mean; blank skipped
    assert out["single_rater"] == 2 and out["n_ratings"] == 6
    (pair,) = out["agreement"]["pairs"]
    assert pair["n"] == 4 and pair["mean_abs_diff"] == pytest.approx(1.0)   # |4-6|, |8-9|, |5-4|, |3-3|
    assert out["judge_correlation"]["n"] == 6 and out["judge_correlation"]["pearson"] is not None
    assert (d / "human.json").is_file()
    r = cli("eval", "human", "--ratings", str(a), str(b), "--answers", str(d))
    assert r.returncode == 0, r.stderr
    assert "Krippendorff's alpha" in r.stdout and "judge vs human (multi): n=6" in r.stdout


def test_bad_ratings_csv_names_file_line_and_column(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("id,system,score\nqa-0,base,eleven\n")
    with pytest.raises(ChatsmithError, match=r"r.csv:2: column 'score': 'eleven' is not a number"):
        read_ratings(p)
    p.write_text("id,system,score\nqa-0,base,12\n")
    with pytest.raises(ChatsmithError, match=r"r.csv:2: column 'score': score 12 is outside 0-10"):
        read_ratings(p)
    p.write_text("name,score\nx,1\n")
    with pytest.raises(ChatsmithError, match=r"r.csv:1: no 'id' column"):
        read_ratings(p)


def test_report_markdown_html_png_with_stars_spread_and_failures(tmp_path, cli):
    d = _answers_dir(tmp_path, samples=2)
    paths = write_report(d)
    md = paths["markdown"].read_text()
    # DreamerGPT's layout: category | suite file | items | one column per system (0-100) | failures
    assert "| Category | Suite | Items | base | tuned | Failed judgments |" in md
    # qa: tuned gets 8 then 7 -> 80 and ~70 (qa-2 failed in sample 0) ; spread shown, best starred
    qa_row = next(line for line in md.splitlines() if line.startswith("| Knowledge QA"))
    cells = [c.strip() for c in qa_row.strip("|").split("|")]
    assert cells[1] == "01qa.jsonl" and cells[2] == "3" and cells[5] == "1"
    assert "±" in cells[3] and cells[4].endswith("*") and not cells[3].endswith("*")
    assert cells[4].startswith("75 ± 7.1")  # samples: 80 and 70 -> mean 75, stdev 7.07
    assert "1 unparsable" in md and "2 sample(s) per item" in md
    html = paths["html"].read_text()
    assert "<table>" in html and "class='best'" in html and "scores.png" in html
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the CLI computes the automatic metrics too: math answers "7" vs expected 0 and 1
    r = cli("eval", "report", "--answers", str(d), "--output", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    md2 = (tmp_path / "rep" / "report.md").read_text()
    assert "## Automatic metrics" in md2
    math_row = next(line for line in md2.splitlines() if line.startswith("| Math reasoning") and "| math |" in line)
    # Category | Suite | Metric | Items | base | tuned | Unscored; 2 items are marked as too few
    assert [c.strip() for c in math_row.strip("|").split("|")][1:] == ["09math", "math", "2 (<10)", "0", "50*", "0"]


def test_report_cli_errors_are_one_line(tmp_path, cli):
    r = cli("eval", "report", "--answers", str(tmp_path))
    assert r.returncode == 2 and "not an answers directory" in r.stderr and "Traceback" not in r.stderr


def test_pairwise_report_counts_wins_over_both_orders(tmp_path):
    d = _answers_dir(tmp_path, samples=1)
    (d / "judgments-multi.jsonl").unlink()
    rows = []
    for x in ("qa-0", "qa-1"):
        for order in (["base", "tuned"], ["tuned", "base"]):
            rows.append({"item": x, "category": "qa", "sample": 0, "order": order, "mode": "pairwise",
                         "status": "ok", "scores": {"base": 5, "tuned": 7 if x == "qa-0" else 5}})
    rows.append({"item": "qa-2", "category": "qa", "sample": 0, "order": ["base", "tuned"], "mode": "pairwise",
                 "status": "error", "error": "timeout", "error_kind": "timeout"})
    (d / "judgments-pairwise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = write_report(d)["markdown"].read_text()
    assert "## LLM judge (pairwise)" in md
    assert "base 0-2-2 (win rate 25%); tuned 2-2-0 (win rate 75%)" in md
    assert "1 failed calls" in md
