"""Every training recipe, end to end up to training: its documented `chatsmith data prepare` command(s), run
verbatim on small stand-in data (hub ids become local `save_to_disk` folders of the same name, files become small
files of the named format), then `chatsmith train RECIPE --dry-run` on what they wrote. Only the model is swapped
for a tiny local one (the recipes name 3B-13B hub models), and fp16 for fp32 on a machine without a GPU (fp16
autocast needs one); everything else (template, data folder, lengths, batch) is the recipe's own."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from chatsmith.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TRAIN_RECIPES = sorted(p for p in RECIPES.glob("*.yaml") if not p.name.startswith("synth-"))


def prepare_commands(recipe: Path) -> list[list[str]]:
    """The `chatsmith data prepare ...` commands in the recipe's header comment (backslash continuations joined)."""
    lines = [line[1:].strip() for line in recipe.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    out, cur = [], None
    for line in lines:
        if cur is None and line.startswith("chatsmith data prepare"):
            cur = line
        elif cur is not None:
            cur += " " + line
        else:
            continue
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        out.append(shlex.split(re.sub(r"\s+#.*$", "", cur))[1:])   # drop "chatsmith" and a trailing comment
        cur = None
    return out


def _row(fmt: str, i: int, tag: str) -> dict:
    """Row i of a stand-in source in format `fmt`; `tag` (the source) keeps two sources' rows apart for dedupe."""
    q, a = f"What is {i} plus {i}? ({tag})", f"{i} plus {i} is {2 * i}."
    return {
        "alpaca": {"instruction": q, "input": "", "output": a},
        "gpt4all": {"prompt": q, "response": a, "source": "stand-in"},
        "hh_prompt": {"prompt": f"\n\nHuman: Hello, can you help me with sums?\n\nAssistant: Of course.\n\nHuman: {q}"
                                "\n\nAssistant:", "response": f" {a}", "chosen": f" {a}", "rejected": " No."},
        "dolly": {"instruction": q, "context": "", "response": a, "category": "open_qa"},
        "sharegpt": {"id": f"sg{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
        "airoboros": {"instruction": q, "response": a, "category": "orca"},
        "firefly": {"kind": "MathQA", "input": f"{i}加{i}等于多少？（{tag}）", "target": f"{i}加{i}等于{2 * i}。"},
        "psyqa": {"question": f"我第{i}次失眠了，怎么办？（{tag}）", "description": "最近压力很大。",
                  "answer": "试试规律作息。"},
    }[fmt]


# what the hub ids the recipes name hold (their real schemas); files name their format or are alpaca rows
HUB_FORMATS = {"tatsu-lab/alpaca": "alpaca", "nomic-ai/gpt4all_prompt_generations": "gpt4all",
               "Dahoas/full-hh-rlhf": "hh_prompt", "HuggingFaceH4/databricks_dolly_15k": "dolly",
               "jeffwan/sharegpt_vicuna": "sharegpt", "jondurbin/airoboros-gpt4": "airoboros",
               "jondurbin/airoboros-gpt4-1.4": "airoboros"}
ROWS = 12


def _stand_in(spec: str, cwd: Path) -> None:
    spec = spec.split("~")[0].split("@")[0]
    if spec.startswith("hf:"):
        import datasets

        name, *rest = spec[3:].split(":")
        fmt = HUB_FORMATS.get(name) or next((r for r in rest if r in ("alpaca", "sharegpt", "airoboros")), "alpaca")
        split = next((r for r in rest if r != fmt), "train")
        datasets.DatasetDict({split: datasets.Dataset.from_list([_row(fmt, i, name) for i in range(ROWS)])}
                             ).save_to_disk(str(cwd / name))
        return
    path, _, fmt = spec.partition(":")
    f = cwd / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("".join(json.dumps(_row(fmt or "alpaca", i, path), ensure_ascii=False) + "\n" for i in range(ROWS)),
                 encoding="utf-8")


def _inputs(argv: list[str]) -> list[str]:
    out, take = [], False
    for a in argv:
        if a in ("-i", "--input"):
            take = True
        elif a.startswith("-"):
            take = False
        elif take:
            out.append(a)
    return out


def _swap_model(argv: list[str], model: Path) -> list[str]:
    return [str(model) if i and argv[i - 1] == "--model" else a for i, a in enumerate(argv)]


def test_recipe_header_parser_finds_every_prepare_command():
    cmds = {p.name: prepare_commands(p) for p in TRAIN_RECIPES}
    assert len(cmds["dreamer-13b-lora-hotstart.yaml"]) == 3 and cmds["smollm2-lora-demo.yaml"] == []
    [st] = cmds["stablelm-tuned-alpha-7b.yaml"]
    assert st[:3] == ["data", "prepare", "-i"] and "hf:Dahoas/full-hh-rlhf" in st
    assert st[-2:] == ["-o", "data/stablelm-sft"]


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: p.stem)
def test_recipe_prepares_and_dry_runs(recipe, tiny_root, tmp_path, monkeypatch, capsys):
    import tiny
    import torch

    from chatsmith.templates import template_names
    from chatsmith.train.config import load_config

    cfg = load_config(recipe)
    if cfg.template and cfg.template not in template_names():
        pytest.skip(f"template {cfg.template!r} is not registered yet (it comes with the airoboros_v1 change)")
    # a tiny model of the recipe's own architecture, so its LoRA target modules exist
    tiny_llama = tiny.build("bloom" if "bloom" in str(cfg.model).lower() else "llama", tiny_root)
    monkeypatch.chdir(tmp_path)
    for argv in prepare_commands(recipe):
        for spec in _inputs(argv):
            _stand_in(spec, tmp_path)
        assert main(_swap_model(argv, tiny_llama)) == 0, argv
        out = Path(argv[argv.index("-o") + 1])
        report = json.loads((out / "report.json").read_text())
        assert report["ok"] and report["totals"]["kept"] == report["totals"]["read"] == ROWS * len(_inputs(argv))
        assert (out / "train.jsonl").is_file() and (out / "val.jsonl").is_file()
    capsys.readouterr()
    # the stand-in sets have 12 rows; a recipe's validation count (DreamerGPT's 2000) is for the real sets
    flags = ["--model", str(tiny_llama), "--val-set-size", "1"]
    if cfg.model == "smollm2":     # the embedded model is here: its bundled rows fit its own tokenizer's lengths
        flags = flags[2:]
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        flags += ["--precision", "fp32"]
    assert main(["train", str(recipe), "--dry-run", *flags]) == 0
    err = capsys.readouterr().err
    assert "not training (--dry-run)" in err and f"template {cfg.template!r}" in err
    stages = len(cfg.stages or [None])
    assert err.count(" training rows") == stages, err
