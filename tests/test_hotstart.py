"""DreamerGPT's hot start with an extended vocabulary: a Chinese-Alpaca-style LoRA (a tokenizer with added Chinese
tokens, embed_tokens/lm_head saved in the peft modules_to_save layout) merges into its base with the embeddings
resized, equals base + adapter as Chinese-LLaMA's own merge script computes it, ships the adapter's tokenizer, and
three incremental stages train on top (one resumed mid-stage) with the hot start in the lineage. Adapters that do
not fit fail with one line naming the file and leave nothing behind."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import make_tiny_hotstart  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

ZH = ["长城", "北京", "中国", "你好", "心理", "咨询"]


@pytest.fixture(scope="module")
def zh_lora(tiny_llama, tmp_path_factory) -> Path:
    return make_tiny_hotstart.build(str(tiny_llama), tmp_path_factory.mktemp("hot") / "zh-alpaca-lora", seed=3)


def _load(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _reference(base: Path, adapter: Path) -> torch.nn.Module:
    """base + adapter the way Chinese-LLaMA's merge script does it: resize, then peft (no chatsmith code)."""
    from peft import PeftModel

    model = _load(base)
    model.resize_token_embeddings(len(AutoTokenizer.from_pretrained(str(adapter))))
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def _prompts(tok) -> list[list[int]]:
    new = [tok.convert_tokens_to_ids(w) for w in ZH]
    return [[5, 40, new[0], new[1], 100, new[2]], [new[3], new[4], 12, new[5], 13, 14]]


def test_adapter_layout_is_chinese_alpacas(tiny_llama, zh_lora):
    from safetensors import safe_open

    with safe_open(str(zh_lora / "adapter_model.safetensors"), "pt") as f:
        full = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if "lora_" not in k}
    n_base, n_zh = len(AutoTokenizer.from_pretrained(str(tiny_llama))), len(AutoTokenizer.from_pretrained(str(zh_lora)))
    assert n_zh > n_base
    assert full == {"base_model.model.model.embed_tokens.weight": (n_zh, 64),
                    "base_model.model.lm_head.weight": (n_zh, 64)}


def test_merge_resizes_and_equals_base_plus_adapter(cli, tiny_llama, zh_lora, tmp_path):
    out = tmp_path / "merged"
    r = cli("merge", "--base", str(tiny_llama), "--adapter", str(zh_lora), "--output", str(out), "--dtype", "fp32",
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    tok = AutoTokenizer.from_pretrained(str(out))                    # the adapter's tokenizer ships with the model
    zh_tok = AutoTokenizer.from_pretrained(str(zh_lora))
    assert len(tok) == len(zh_tok) and tok.get_vocab() == zh_tok.get_vocab()
    assert tok("长城", add_special_tokens=False)["input_ids"] == [zh_tok.convert_tokens_to_ids("长城")]
    merged = _load(out)
    assert merged.config.vocab_size == len(zh_tok) and merged.get_input_embeddings().weight.shape[0] == len(zh_tok)
    prompts = _prompts(tok)
    assert sum(i >= 600 for p in prompts for i in p) == len(ZH)       # ids beyond the old vocabulary
    with torch.no_grad():
        got = torch.stack([merged(torch.tensor([p])).logits[0] for p in prompts])
        ref = _reference(tiny_llama, zh_lora)
        want = torch.stack([ref(torch.tensor([p])).logits[0] for p in prompts])
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # the adapter's own rows for the new tokens, not a resize's fresh ones
    from safetensors.torch import load_file

    saved = load_file(str(zh_lora / "adapter_model.safetensors"))
    torch.testing.assert_close(merged.get_input_embeddings().weight,
                               saved["base_model.model.model.embed_tokens.weight"])
    torch.testing.assert_close(merged.lm_head.weight, saved["base_model.model.lm_head.weight"])
    meta = json.loads((out / "chatsmith.json").read_text())
    assert meta["vocab_extended"] == {"base": 600, "merged": len(zh_tok), "tokenizer": len(zh_tok)}


def test_chat_loads_the_unmerged_hot_start(cli, tiny_llama, zh_lora):
    """--model BASE --adapter ZH: the engine resizes too and reads the adapter's tokenizer."""
    r = cli("chat", "--model", str(tiny_llama), "--adapter", str(zh_lora), "--template", "dreamer_zh",
            "--no-history", "--max-new-tokens", "3", "--dtype", "fp32", input="你好长城\n",
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr


class CrashAt(TrainerCallback):
    def __init__(self, stage_dir: Path, step: int):
        self.stage_dir, self.step = stage_dir, step

    def on_step_end(self, args, state, control, **kw):
        if Path(args.output_dir).parent == self.stage_dir and state.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


def _stage_data(root: Path) -> list[Path]:
    out = []
    for i, topic in enumerate(["长城", "心理咨询", "北京"]):
        d = root / f"f{i + 1}"
        d.mkdir(parents=True)
        rows = [{"instruction": f"用一句话介绍{topic}。第{k}题", "input": "", "output": f"{topic}在中国。你好{k}"}
                for k in range(8)]
        (d / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        out.append(d)
    return out


def test_three_stages_on_the_merged_hot_start_resume_and_lineage(tiny_llama, zh_lora, tmp_path, capfd):
    from safetensors.torch import load_file

    from chatsmith.export.merge import merge_adapters
    from chatsmith.train import train

    hot = merge_adapters(str(tiny_llama), [str(zh_lora)], tmp_path / "zh-alpaca-merged", dtype="fp32")
    f1, f2, f3 = _stage_data(tmp_path / "data")
    cfg = {"model": str(hot), "template": "dreamer_zh", "max_length": 64, "batch_size": 2, "learning_rate": 5e-3,
           "max_steps": 4, "save_steps": 2, "logging_steps": 1, "precision": "fp32", "lr_scheduler": "constant",
           "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "keep_checkpoints": True,
           "stages": [{"name": "f1", "data": str(f1)}, {"name": "f2", "data": str(f2)},
                      {"name": "f3", "data": str(f3)}]}
    whole = train({**cfg, "output_dir": str(tmp_path / "whole")})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train({**cfg, "output_dir": str(out)}, callbacks=[CrashAt(out / "stages" / "f2", 3)])
    assert (out / "stages" / "f1" / "chatsmith.json").is_file() and not (out / "stages" / "f3").exists()
    capfd.readouterr()
    train({**cfg, "output_dir": str(out), "resume": "auto"})
    err = capfd.readouterr().err
    assert "stage f1 is already complete" in err and "stage f2: resuming from" in err and "checkpoint-2" in err
    a, b = load_file(str(whole / "adapter_model.safetensors")), load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    meta = json.loads((out / "chatsmith.json").read_text())
    lin = meta["lineage"]
    assert [s["name"] for s in lin["stages"]] == ["f1", "f2", "f3"]
    assert lin["stages"][1]["resumed_from"].endswith("checkpoint-2")
    hs = lin["hot_start"]["merged"]
    assert hs["base"] == str(tiny_llama) and [x["path"] for x in hs["adapters"]] == [str(zh_lora)]
    assert hs["adapters"][0]["sha256"]
    assert hs["vocab_extended"]["merged"] == len(AutoTokenizer.from_pretrained(str(hot)))
    # the stages' tokenizer is the extended one: a Chinese word is one token in the output's tokenizer
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok("长城", add_special_tokens=False)["input_ids"]) == 1


def test_train_continues_the_extended_adapter(tiny_llama, zh_lora, tmp_path):
    """`model:` the hot-start adapter itself: training resizes the base and trains the adapter's embeddings on."""
    from safetensors.torch import load_file

    from chatsmith.train import train

    (f1,) = _stage_data(tmp_path / "data")[:1]
    out = train({"model": str(zh_lora), "data": str(f1), "template": "dreamer_zh", "output_dir": str(tmp_path / "o"),
                 "max_length": 64, "batch_size": 2, "max_steps": 2, "precision": "fp32", "learning_rate": 1e-2})
    before = load_file(str(zh_lora / "adapter_model.safetensors"))
    after = load_file(str(out / "adapter_model.safetensors"))
    key = "base_model.model.model.embed_tokens.weight"
    emb = next(v for k, v in after.items() if k.replace(".modules_to_save", "") == key)
    assert emb.shape == before[key].shape and not torch.equal(emb, before[key])
    lin = json.loads((out / "chatsmith.json").read_text())["lineage"]
    assert lin["hot_start"]["continued"][0]["path"] == str(zh_lora)
    assert lin["stages"][0]["continued_from"] == str(zh_lora)


# ---- adapters that do not fit -------------------------------------------------------------------------------
def _swap_two_ids(adapter: Path, out: Path) -> Path:
    shutil.copytree(adapter, out)
    tj = json.loads((out / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = [t for t, i in vocab.items() if i in (40, 41)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    return out


def _wide_hotstart(tiny_llama: Path, root: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = root / "wide-llama"
    cfg = json.loads((tiny_llama / "config.json").read_text())
    LlamaForCausalLM(LlamaConfig(**{**cfg, "hidden_size": 96, "intermediate_size": 160})).save_pretrained(wide)
    for f in tiny_llama.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, wide / f.name)
    return make_tiny_hotstart.build(str(wide), root / "wide-zh-lora")


@pytest.mark.parametrize("case", ["not-an-extension", "hidden-size", "smaller-vocab", "no-embeddings"])
def test_adapters_that_do_not_fit_fail_in_one_line(case, cli, tiny_llama, zh_lora, tmp_path):
    from safetensors.torch import load_file, save_file

    base = tiny_llama
    work = tmp_path / "work"
    work.mkdir()
    if case == "not-an-extension":
        adapter = _swap_two_ids(zh_lora, work / "swapped")
        expect = f"{adapter}/tokenizer.json: this tokenizer does not extend the base model's ({tiny_llama}): token "
    elif case == "hidden-size":
        adapter = _wide_hotstart(tiny_llama, work)
        expect = (f"{adapter}/adapter_model.safetensors: this adapter was trained on another base model: its "
                  "model.embed_tokens is")
    elif case == "smaller-vocab":
        # an adapter saving 600-row embeddings onto a base that already has the extended vocabulary
        from chatsmith.export.merge import merge_adapters

        base = merge_adapters(str(tiny_llama), [str(zh_lora)], work / "zh-merged", dtype="fp32")
        adapter = work / "small"
        shutil.copytree(zh_lora, adapter)
        w = {k: (v[:600].clone() if v.shape[0] > 600 and "lora_" not in k else v)
             for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()}
        save_file(w, str(adapter / "adapter_model.safetensors"))
        expect = (f"{adapter}/adapter_model.safetensors: this adapter was trained on another base model: its "
                  "vocabulary (600 tokens) is smaller than the base model's (")
    else:
        adapter = work / "no-emb"
        shutil.copytree(zh_lora, adapter)
        w = {k: v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_" in k}
        save_file(w, str(adapter / "adapter_model.safetensors"))
        expect = f"{adapter}: its tokenizer has "
    out = tmp_path / "merged"
    # checked on a weightless copy of the base: the error comes before any weights are loaded
    from chatsmith import models
    from chatsmith.errors import ModelLoadError
    from chatsmith.export.merge import merge_adapters

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "load_model", lambda *a, **k: pytest.fail("the base's weights were loaded"))
        with pytest.raises(ModelLoadError, match="^" + re.escape(expect)):
            merge_adapters(str(base), [str(adapter)], out)
    r = cli("merge", "--base", str(base), "--adapter", str(adapter), "--output", str(out),
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    # one error line (transformers' weight-loading progress bar may come before it), no traceback
    assert r.stderr.count("chatsmith: ") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("chatsmith: " + expect), r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tied_base_stays_tied_unless_the_adapter_unties_it(tiny_llama, tmp_path):
    """SmolLM2-style tied embeddings: peft's modules_to_save copies untie them; equal copies are tied again, an
    adapter with its own lm_head gives an untied model that keeps that lm_head."""
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatsmith.export.merge import merge_adapters

    tied = tmp_path / "tied-llama"
    cfg = json.loads((tiny_llama / "config.json").read_text())
    LlamaForCausalLM(LlamaConfig(**{**cfg, "tie_word_embeddings": True})).save_pretrained(tied)
    for f in tiny_llama.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, tied / f.name)
    lora = make_tiny_hotstart.build(str(tied), tmp_path / "zh-lora")
    out = merge_adapters(str(tied), [str(lora)], tmp_path / "merged", dtype="fp32")
    merged = _load(out)
    assert merged.config.tie_word_embeddings and merged.lm_head.weight is merged.get_input_embeddings().weight
    ids = torch.tensor(_prompts(AutoTokenizer.from_pretrained(str(out))))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, _reference(tied, lora)(ids).logits, atol=1e-4, rtol=0)

    w = load_file(str(lora / "adapter_model.safetensors"))
    w["base_model.model.lm_head.weight"] = w["base_model.model.lm_head.weight"] * 1.5
    save_file(w, str(lora / "adapter_model.safetensors"))
    untied = _load(merge_adapters(str(tied), [str(lora)], tmp_path / "untied", dtype="fp32"))
    assert not untied.config.tie_word_embeddings
    torch.testing.assert_close(untied.lm_head.weight, w["base_model.model.lm_head.weight"])
    torch.testing.assert_close(untied.get_input_embeddings().weight, w["base_model.model.model.embed_tokens.weight"])


def test_gguf_export_of_the_merged_hot_start(tiny_llama, zh_lora, tmp_path):
    """The extended vocabulary reaches llama.cpp: the added Chinese tokens tokenize as in HF and the greedy
    continuations at f32 are identical."""
    pytest.importorskip("llama_cpp")
    from test_gguf import greedy_agreement, load_gguf

    from chatsmith.engine.transformers_engine import HFEngine
    from chatsmith.export.gguf import export_gguf
    from chatsmith.export.merge import merge_adapters

    merged = merge_adapters(str(tiny_llama), [str(zh_lora)], tmp_path / "merged", dtype="fp32")
    llm = load_gguf(export_gguf(str(merged), tmp_path / "zh.gguf", qtype="f32"))
    hf = AutoTokenizer.from_pretrained(str(merged))
    assert llm.n_vocab() == len(hf)
    for text in ["你好长城", "用一句话介绍北京。", "中国 心理咨询"]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert any(i >= 600 for i in ids) and llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    engine = HFEngine.load(str(merged), template="chatml", dtype="fp32")
    agree, total, rows = greedy_agreement(engine, llm, max_new=12)
    assert rows == 5 and agree == total
