"""`chatsmith merge`: merged logits equal base + adapter logits; stacked stages; the output loads in plain
transformers (chatsmith not importable) and its chat_template renders our prompt; bad input fails cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from chatsmith.conversation import Conversation, Message
from chatsmith.templates import get_template
from chatsmith.templates.spec import template_to_meta

PROMPTS = [[5, 40, 41, 42, 100, 200], [7, 300, 12, 13, 14, 15], [9, 9, 9, 250, 251, 252]]
# fp32 merge: W + B@A*s folded once; the only difference left is summation order.
ATOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


def make_lora(base: Path, out: Path, *, seed: int, targets=("q_proj", "v_proj", "down_proj"),
              template: str | None = "chatml") -> Path:
    """A LoRA adapter made directly with peft, lora_B random (peft initializes it to zero, which would make the
    merge a no-op the test could not see)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").is_file():
        return out
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    peft_model.save_pretrained(str(out))
    meta = {"base_model": str(base)}
    if template:
        meta["template"] = template_to_meta(get_template(template))
    (out / "chatsmith.json").write_text(json.dumps(meta))
    return out


def logits(model, prompts=PROMPTS) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(torch.tensor([p])).logits[0] for p in prompts])


def load(path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return (make_lora(tiny_llama, root / "stage1", seed=1),
            make_lora(tiny_llama, root / "stage2", seed=2, targets=("k_proj", "o_proj", "up_proj")))


def test_merge_cli_logits_equal_base_plus_adapter(cli, tiny_llama, adapters, tmp_path):
    from peft import PeftModel

    out = tmp_path / "merged"
    r = cli("merge", "--base", str(tiny_llama), "--adapter", str(adapters[0]), "--output", str(out),
            "--dtype", "fp32", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    expected = logits(PeftModel.from_pretrained(load(tiny_llama), str(adapters[0])).eval())
    base = logits(load(tiny_llama))
    got = logits(load(out))
    assert (expected - base).abs().max() > 0.05          # the adapter changes the model...
    assert torch.allclose(got, expected, atol=ATOL)      # ...and the merged model is base + adapter
    meta = json.loads((out / "chatsmith.json").read_text())
    assert meta["template"]["name"] == "chatml"
    assert meta["merged_from"] == {"base": str(tiny_llama), "adapters": [str(adapters[0])]}
    assert meta["method"] == "merged" and meta["dtype"] == "float32"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp dir left


def test_stacked_stages_apply_in_order(tiny_llama, adapters, tmp_path):
    from peft import PeftModel

    from chatsmith.export.merge import merge_adapters

    out = merge_adapters(str(tiny_llama), [str(a) for a in adapters], tmp_path / "stacked", dtype="fp32")
    stage1 = PeftModel.from_pretrained(load(tiny_llama), str(adapters[0])).merge_and_unload()
    expected = logits(PeftModel.from_pretrained(stage1, str(adapters[1])).eval())
    assert torch.allclose(logits(load(out)), expected, atol=ATOL)
    only_first = logits(load(merge_adapters(str(tiny_llama), [str(adapters[0])], tmp_path / "one", dtype="fp32")))
    assert (only_first - expected).abs().max() > 0.05    # the second stage was really applied

    # bf16 output: saved as bf16, same model within bf16 rounding
    bf = merge_adapters(str(tiny_llama), [str(a) for a in adapters], tmp_path / "bf16", dtype="bf16")
    assert json.loads((bf / "config.json").read_text())["dtype"] == "bfloat16"
    assert (logits(load(bf)) - expected).abs().max() < 0.05


PLAIN_TRANSFORMERS = r"""
import json, sys
sys.path.append(sys.argv[2])          # site-packages only: no .pth files, so no editable chatsmith
try:
    import chatsmith
    raise SystemExit("chatsmith is importable here")
except ImportError:
    pass
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
msgs = json.loads(sys.argv[3])
text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
ids = tok(text, add_special_tokens=False)["input_ids"]
out = model.generate(__import__("torch").tensor([ids]), max_new_tokens=3, do_sample=False)
print(json.dumps({"text": text, "ids": ids, "new": out[0, len(ids):].tolist(), "type": type(model).__name__}))
"""


def test_plain_transformers_loads_merged_dir(tiny_llama, adapters, tmp_path):
    from transformers import AutoTokenizer

    from chatsmith.export.merge import merge_adapters

    out = merge_adapters(None, [str(adapters[0])], tmp_path / "merged", dtype="fp32")  # base from chatsmith.json
    conv = Conversation([Message("user", "What is the capital of France?"), Message("assistant", "Paris."),
                         Message("user", "And of Italy?")], system="Be brief.")
    msgs = [{"role": "system", "content": conv.system}, *[m.to_dict() for m in conv.messages]]
    site = sysconfig.get_paths()["purelib"]
    # -I: no cwd or PYTHON* variables on sys.path; -S: no site, hence no editable-install hook
    r = subprocess.run([sys.executable, "-I", "-S", "-c", PLAIN_TRANSFORMERS, str(out), site, json.dumps(msgs)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    ours = get_template("chatml").render(conv, AutoTokenizer.from_pretrained(str(out)), add_generation_prompt=True)
    assert got["type"] == "LlamaForCausalLM"
    assert got["text"] == ours.text
    assert got["text"].endswith("<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n")
    assert got["ids"] == ours.input_ids
    assert len(got["new"]) == 3


def test_adapter_from_another_base_fails_cleanly(tiny_llama, tiny_root, tmp_path):
    import tiny
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatsmith.errors import ModelLoadError
    from chatsmith.export.merge import merge_adapters

    out = tmp_path / "out"
    # name mismatch: a gpt_neox adapter (query_key_value) on a llama base
    neox = make_lora(tiny.build("gpt_neox", tiny_root), tmp_path / "neox-lora", seed=3,
                     targets=("query_key_value",))
    with pytest.raises(ModelLoadError,
                       match="neox-lora/adapter_model.safetensors: this adapter was trained on another base model"):
        merge_adapters(str(tiny_llama), [str(neox)], out)
    # shape mismatch: same tensor names, a wider llama
    wide = tmp_path / "wide-llama"
    cfg = json.loads((tiny_llama / "config.json").read_text())
    LlamaForCausalLM(LlamaConfig(**{**cfg, "hidden_size": 96, "intermediate_size": 160})).save_pretrained(wide)
    wide_lora = make_lora(wide, tmp_path / "wide-lora", seed=4)
    with pytest.raises(ModelLoadError,
                       match="wide-lora/adapter_model.safetensors: this adapter was trained on another base model"):
        merge_adapters(str(tiny_llama), [str(wide_lora)], out)
    # nothing left behind: no output, no temp directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neox-lora", "wide-llama", "wide-lora"]


def test_existing_output_refused_unless_force(cli, tiny_llama, adapters, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("merge", "--base", str(tiny_llama), "--adapter", str(adapters[0]), "--output", str(out))
    assert r.returncode == 2 and "already exists; pass --force" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"

    from chatsmith.export.merge import merge_adapters

    merge_adapters(str(tiny_llama), [str(adapters[0])], out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
