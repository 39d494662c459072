"""inspect: trainable tokens marked (colour in a terminal, markers when piped), length stats, PNG histogram."""

from __future__ import annotations

import json

from chatsmith.conversation import Conversation
from chatsmith.data.inspect import CLOSE, GREEN, OPEN, RESET, highlight, length_stats
from chatsmith.templates import get_template


def test_highlight_marks_exactly_the_answers_and_end_tokens(tiny_tokenizer):
    conv = Conversation.from_dict({"messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]})
    r = get_template("vicuna_v1.1").render(conv, tiny_tokenizer)
    marked = highlight(r, tiny_tokenizer, color=False)
    # the space after "ASSISTANT:" is trained with the answer (FastChat's tokenization)
    assert marked.endswith(f"USER: 你好 ASSISTANT:{OPEN} 你好！</s>{CLOSE}")
    assert f"USER: What is the capital of France? ASSISTANT:{OPEN} Paris.</s>{CLOSE}USER:" in marked
    assert marked.count(OPEN) == 2 and marked.replace(OPEN, "").replace(CLOSE, "") == r.text
    coloured = highlight(r, tiny_tokenizer, color=True)
    assert f"{GREEN} Paris.</s>{RESET}" in coloured and OPEN not in coloured


def test_length_stats():
    s = length_stats([10, 20, 30, 40, 100], max_length=35)
    assert (s["rows"], s["min"], s["max"], s["mean"], s["p50"], s["p90"], s["over_max_length"]) == \
        (5, 10, 100, 40.0, 30, 100, 2)


def test_inspect_cli_piped_with_plot(tmp_path, tiny_llama, capsys):
    # the real CLI entry point, in-process (stdout is captured, so not a terminal): saves a second
    # torch/transformers import; the subprocess CLI path is covered by the prepare tests
    from chatsmith.cli import main

    src = tmp_path / "a.jsonl"
    rows = [{"instruction": f"Say {w}", "input": "", "output": f"{w}!"} for w in ("hello", "bonjour", "你好")]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{broken\n", encoding="utf-8")
    png = tmp_path / "lengths.png"
    rc = main(["data", "inspect", str(src), "--model", str(tiny_llama), "--template", "alpaca", "-n", "2",
               "--plot", str(png), "--max-length", "40"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"### Response:\n{OPEN}hello!</s>{CLOSE}" in out and f"{OPEN}bonjour!</s>{CLOSE}" in out
    assert "你好!" not in out.split("rows measured")[0]  # only -n 2 samples shown
    assert "rows measured: 3" in out and "tokens per row: min" in out and "over --max-length 40:" in out
    assert "malformed JSON 1" in out
    assert "\x1b[" not in out  # piped: markers, no colour codes
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
