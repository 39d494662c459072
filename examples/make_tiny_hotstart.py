"""Build a stand-in for Chinese-Alpaca-LoRA, DreamerGPT's hot start, on a small base model.

The real adapter (ymcui/Chinese-LLaMA-Alpaca) extends LLaMA's tokenizer with Chinese pieces (32,000 -> 49,954
tokens) and saves the whole embed_tokens and lm_head beside its LoRA weights (peft modules_to_save). This script
makes the same kind of adapter on BASE in seconds:
  * the base tokenizer plus Chinese words as added tokens (ids after the base's, every base id unchanged);
  * the embeddings resized to the new vocabulary; each new row starts as the mean of the rows of the pieces the
    base tokenizer splits the word into (Chinese-LLaMA trains them; a mean is a fair untrained start);
  * a LoRA on every projection (Chinese-Alpaca's targets) with random lora_B, so the adapter visibly changes the
    model, and embed_tokens/lm_head saved in the peft layout Chinese-Alpaca ships
    (base_model.model.model.embed_tokens.weight, base_model.model.lm_head.weight);
  * the extended tokenizer saved in the adapter folder, the base recorded in adapter_config.json.

    python examples/make_tiny_hotstart.py --base smollm2 --output models/zh-alpaca-lora
    chatsmith merge --adapter models/zh-alpaca-lora --output runs/zh-alpaca-merged
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WORDS = ["长城", "北京", "中国", "你好", "介绍", "一句话", "心理", "咨询", "翻译", "回答", "问题", "焦虑", "睡眠",
         "朋友", "工作", "学习", "压力", "建议"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]


def build(base: str, output: Path, *, seed: int = 0, words: list[str] = WORDS) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatsmith import models

    ref = models.resolve(base)
    tok = AutoTokenizer.from_pretrained(str(ref.path))
    pieces = {w: tok(w, add_special_tokens=False)["input_ids"] for w in words if w not in tok.get_vocab()}
    tok.add_tokens(list(pieces))
    model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.float32)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        for w, ids in pieces.items():
            new = tok.convert_tokens_to_ids(w)
            emb[new] = emb[ids].mean(0)
            if head is not emb:
                head[new] = head[ids].mean(0)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                     modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    output.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers=False: only the modules_to_save copies, as Chinese-Alpaca's files hold them
    peft_model.save_pretrained(str(output), save_embedding_layers=False)
    tok.save_pretrained(str(output))
    acfg = json.loads((output / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = base
    (output / "adapter_config.json").write_text(json.dumps(acfg, indent=2))
    (output / "README.md").unlink(missing_ok=True)                  # peft's empty model card
    print(f"{output}: LoRA r=8 on {', '.join(TARGETS)} + embed_tokens/lm_head; vocabulary "
          f"{len(tok) - len(pieces)} -> {len(tok)} tokens (base {base})")
    return output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="smollm2", help="base model (smollm2 or a HF model directory)")
    p.add_argument("--output", required=True, type=Path, help="adapter folder to write")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    build(args.base, args.output, seed=args.seed)


if __name__ == "__main__":
    main()
