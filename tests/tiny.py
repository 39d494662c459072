"""Tiny random models and tokenizers, built locally (no hub): llama, gpt_neox and bloom.

The tokenizer is a byte-level BPE trained in a second on a small corpus, with the special tokens every built-in
template uses, so each template's control tokens are real single tokens. `llama-sp` is a llama with a LLaMA-style
SentencePiece tokenizer instead (a real tokenizer.model: BPE pieces with scores, byte fallback, <unk>/<s>/</s> at
0/1/2, a dummy-prefix space) plus two added special tokens, loaded by transformers' own SentencePiece conversion.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|padding|>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>",
            "<|SYSTEM|>", "<|USER|>", "<|ASSISTANT|>"]

CORPUS = [
    "A chat between a curious user and an assistant. USER: hello ASSISTANT: hi there",
    "What is the capital of France? The capital of France is Paris.",
    "Below is an instruction that describes a task. ### Instruction: ### Input: ### Response:",
    "下面是一条描述任务的指令。请写出恰当完成该请求的回答。### 指令: ### 输入: ### 回答:",
    "BEGININPUT BEGINCONTEXT date: 2021-01-01 url: https://web.site/123 ENDCONTEXT ENDINPUT BEGININSTRUCTION "
    "ENDINSTRUCTION Blueberries are now green. Source:",
    "def add(a, b):\n    return a + b\n PLAINFORMAT [INST] [/INST] <<SYS>> <</SYS>>",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/\\|-_=+*&^%$#@~`",
] * 20


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<|padding|>")
    fast.add_special_tokens({"additional_special_tokens": [t for t in SPECIALS if t not in
                                                           ("<s>", "</s>", "<unk>", "<|padding|>")]})
    fast.save_pretrained(out)
    return fast


SP_ADDED = ["<|im_start|>", "<|im_end|>"]


def build_sp_tokenizer(out: Path, legacy: bool = False):
    """A LLaMA-style SentencePiece tokenizer: tokenizer.model trained by sentencepiece like LLaMA's (BPE, byte
    fallback, split digits, whitespace kept), converted by transformers, plus SP_ADDED as added special tokens.
    legacy=True: LLaMA-1-era behaviour, text after a special token gets the word marker ("</s>▁USER")."""
    import json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(out / "tokenizer"), vocab_size=500, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, minloglevel=2)
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": legacy}))
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.add_special_tokens({"additional_special_tokens": SP_ADDED})
    tok.save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}))  # not saved by transformers
    return tok


def build_model(arch: str, out: Path, vocab_size: int, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, BloomConfig, GPTNeoXConfig, LlamaConfig

    torch.manual_seed(seed)
    if arch in ("llama", "llama-sp"):
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          bos_token_id=2, eos_token_id=3, pad_token_id=1, tie_word_embeddings=False)
        if arch == "llama-sp":   # SentencePiece ids: <unk> 0, <s> 1, </s> 2
            cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, None
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=512, bos_token_id=0, eos_token_id=3,
                            pad_token_id=1, rotary_pct=0.25)
    elif arch == "bloom":
        cfg = BloomConfig(vocab_size=vocab_size, hidden_size=64, n_layer=2, n_head=4, bos_token_id=2,
                          eos_token_id=3, pad_token_id=1)
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    return model


def build(arch: str, root: Path) -> Path:
    """A loadable model dir with tokenizer; cached per root."""
    out = root / f"tiny-{arch}"
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_sp_tokenizer(out) if arch == "llama-sp" else build_tokenizer(out)
    build_model(arch, out, vocab_size=len(tok))
    return out
