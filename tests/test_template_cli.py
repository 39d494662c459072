"""`chatsmith template list` / `chatsmith template render` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json

import pytest
import tiny

from chatsmith.templates import template_names

CONV = {"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello!"}]}


@pytest.fixture
def conv_file(tmp_path):
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(CONV), encoding="utf-8")
    return str(path)


def test_list_names_every_template(cli):
    r = cli("template", "list")
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()] == template_names()


def test_render_prints_the_prompt_exactly(cli, conv_file):
    r = cli("template", "render", "--template", "vicuna_v1.1", conv_file)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Be brief. USER: Hi ASSISTANT: Hello!</s>"  # no newline added


def test_render_alpaca_row_from_stdin_with_generation_prompt(cli):
    row = {"instruction": "Add the numbers.", "input": "2 3"}
    r = cli("template", "render", "-t", "alpaca", "--add-generation-prompt", "-", input=json.dumps(row))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("Below is an instruction that describes a task, paired with an input that provides further "
                        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                        "Add the numbers.\n\n### Input:\n2 3\n\n### Response:\n")


def test_render_json_tokenizes_with_smollm2_by_default(cli, conv_file, tmp_path):
    r = cli("template", "render", "-t", "chatml", "--json", conv_file)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {
        "prompt": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                  "<|im_start|>assistant\nHello!<|im_end|>\n",
        "input_ids": [1, 9690, 198, 6077, 5453, 30, 2, 198, 1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198, 19556,
                      17, 2, 198],
        "labels": [-100] * 18 + [19556, 17, 2, -100],
    }


def test_render_train_on_inputs_with_a_model_dir(cli, conv_file, tmp_path):
    model_dir = tmp_path / "model"  # a model directory; rendering reads only its tokenizer
    model_dir.mkdir()
    tiny_tokenizer = tiny.build_tokenizer(model_dir)
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    r = cli("template", "render", "-t", "stablelm", "--json", "--train-on-inputs", "--model", str(model_dir),
            conv_file)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt"] == "<|SYSTEM|>Be brief.<|USER|>Hi<|ASSISTANT|>Hello!</s>"
    assert out["labels"] == out["input_ids"]
    assert tiny_tokenizer.decode(out["input_ids"]) == out["prompt"]


@pytest.mark.parametrize("args,stdin,message", [
    (["-t", "nope"], json.dumps(CONV), "unknown template 'nope'; known templates: vicuna_v1.1"),
    (["-t", "chatml"], '{"messages": [{"role": "assistant", "content": "hi"}]}',
     "stdin: messages[0] has role 'assistant' but 'user' was expected"),
    (["-t", "chatml"], '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
     "stdin: messages[1] has role 'user' but 'assistant' was expected"),
    (["-t", "chatml"], '{"messages": [{"role": "bot", "content": "a"}]}', "messages[0].role is 'bot'"),
    (["-t", "chatml"], '{"messages": [\n{"role": "user",}]}', "stdin: line 2: invalid JSON"),
    (["-t", "chatml", "--add-generation-prompt"], json.dumps(CONV), "ends with a user message"),
])
def test_bad_input_is_one_line_and_exit_2(cli, args, stdin, message):
    r = cli("template", "render", *args, input=stdin)
    assert r.returncode == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""
