"""A stand-in for a human rater: fills the `score` column of a blind sheet from `chatsmith eval human
--export-sheet`, so the README's export -> rate -> import -> report runs unattended. People rate by reading;
this scores by a crude rule: `length` (longer answers up to 80 characters score higher) or `chinese` (the share
of Chinese characters, for a Chinese-first model). Usage: python fill_sheet.py RULE SHEET.csv
"""

import csv
import re
import sys


def score(rule: str, answer: str) -> int:
    text = answer.strip()
    if rule == "length":
        return min(10, len(text) // 8)
    cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
    return round(10 * cjk / max(1, len(text)))


rule, path = sys.argv[1], sys.argv[2]
with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
for row in rows:
    row["score"] = str(score(rule, row["answer"]))
with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
print(f"{path}: {len(rows)} answers scored by the {rule!r} rule")
