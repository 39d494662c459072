"""Evaluation: bundled suites -> answers -> LLM judge / automatic metrics / human ratings -> report.

Python API (what `chatsmith eval ...` runs):

    from chatsmith.eval import answer_suite, judge, score_automatic, write_report
    answer_suite({"base": "smollm2", "tuned": "smollm2+out/lora"}, "contextual", "runs/eval")
    score_automatic("runs/eval")                 # exact match, code tests + form, chrF, context.cite/abstain/invented
    judge("runs/eval", "smollm2", mode="multi")  # a local judge served in-process, or an http(s) endpoint
    write_report("runs/eval")                    # report/report.md, report.html, scores.png
"""

from __future__ import annotations

from chatsmith.eval.answer import answer_suite
from chatsmith.eval.human import merge_ratings
from chatsmith.eval.judge import judge
from chatsmith.eval.metrics import score_automatic
from chatsmith.eval.report import write_report
from chatsmith.eval.suite import load_suite

# `judge` is both a submodule and the function: binding the function here, after the submodule is imported,
# makes `from chatsmith.eval import judge` the function.
__all__ = ["answer_suite", "judge", "score_automatic", "write_report", "merge_ratings", "load_suite"]
