"""`chatsmith export gguf`: llama.cpp (llama-cpp-python) loads the file and continues our rendered prompts
token for token like chatsmith's own engine; tokenizer and chat template metadata are right; bad input fails
with one clear error and leaves no file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chatsmith.conversation import Conversation, Message
from chatsmith.engine import SamplingParams
from chatsmith.engine.transformers_engine import HFEngine
from chatsmith.export.gguf import export_gguf
from chatsmith.templates.base import bos_prefix_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

llama_cpp = pytest.importorskip("llama_cpp")


QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "How do I add two numbers in Python?",
             "Name three colors.", "Say hello in German."]


def conversations() -> list[Conversation]:
    return [Conversation([Message("user", q)]) for q in QUESTIONS]


def load_gguf(path, n_ctx: int = 512):
    """One thread: on a busy 2-core machine a second spinning llama.cpp thread makes it several times slower.
    The llamacpp engine's safe model params: llama.cpp's AMX/repacked buffers segfault on quantized tensors on
    this CPU (the embedded model's own Q4_1 file crashes the same way)."""
    from chatsmith.engine.llamacpp import _model_params, _safe_params

    with _model_params(**_safe_params()):
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=1, logits_all=True, verbose=False)


def greedy_agreement(engine: HFEngine, llm, max_new: int) -> tuple[int, int, int]:
    """chatsmith's greedy continuation of each prompt, replayed through llama.cpp: at every step, does llama.cpp's
    own argmax pick the token chatsmith picked (or the stop where chatsmith stopped)? All steps agreeing is the
    same as the two greedy continuations being identical. Returns (agreeing steps, steps, identical rows)."""
    params = SamplingParams(temperature=0, max_new_tokens=max_new)
    _, stop_ids = engine.stops(params)
    agree = total = rows = 0
    for conv, res in zip(conversations(), engine.generate(conversations(), params)):
        ids = engine.prompt_ids(conv)
        # llama.cpp's tokenizer reads our rendered prompt text into the same ids (vocab, merges, specials)
        text = engine.template.render(conv, engine.tokenizer, add_generation_prompt=True).text
        prefix = bos_prefix_ids(engine.tokenizer) if engine.template.add_bos else []
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids[len(prefix):]
        llm.reset()
        llm.eval(ids + res.token_ids)
        picks = np.argmax(np.array(llm.scores[len(ids) - 1: len(ids) + len(res.token_ids)]), axis=-1)
        ok = [int(p) == t for p, t in zip(picks, res.token_ids)]
        if res.finish_reason == "stop":
            ok.append(int(picks[-1]) in stop_ids)
        agree, total, rows = agree + sum(ok), total + len(ok), rows + all(ok)
    return agree, total, rows


def test_tiny_llama_f32_matches_engine(tiny_llama, tmp_path):
    from chatsmith import models

    out = export_gguf(str(tiny_llama), tmp_path / "tiny.gguf", qtype="f32")
    llm = load_gguf(out)
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.metadata["tokenizer.ggml.pre"] == "gpt-2"
    assert int(llm.metadata["tokenizer.ggml.eos_token_id"]) == 3
    engine = HFEngine.load(str(tiny_llama), template="chatml", dtype="fp32")
    agree, total, rows = greedy_agreement(engine, llm, max_new=12)
    assert rows == 5 and agree == total   # f32: identical greedy continuations
    # teacher-forced logits agree closely (the Q/K permutation and every tensor name are right)
    ids = engine.prompt_ids(conversations()[0])
    llm.reset()
    llm.eval(ids)
    import torch

    with torch.no_grad():
        hf = models.load_model(str(tiny_llama), dtype="fp32")(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(np.array(llm.scores[: len(ids)]) - hf).max() < 1e-3


def test_tiny_gpt_neox_f32_logits(tmp_path, tiny_root):
    import tiny
    import torch

    from chatsmith import models

    src = tiny.build("gpt_neox", tiny_root)
    llm = load_gguf(export_gguf(str(src), tmp_path / "neox.gguf", qtype="f32"))
    assert llm.metadata["general.architecture"] == "gptneox"
    ids = [5, 40, 41, 42, 100, 200, 300, 17]
    llm.eval(ids)
    with torch.no_grad():
        hf = models.load_model(str(src), dtype="fp32")(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(np.array(llm.scores[: len(ids)]) - hf).max() < 1e-3


def test_tiny_bloom_f32_matches_engine(tmp_path, tiny_root):
    """BLOOM (ALiBi, fused QKV, embedding layernorm, tied output) as llama.cpp's BloomModel converts it."""
    import tiny
    import torch

    from chatsmith import models

    src = tiny.build("bloom", tiny_root)
    llm = load_gguf(export_gguf(str(src), tmp_path / "bloom.gguf", qtype="f32"))
    assert llm.metadata["general.architecture"] == "bloom"
    engine = HFEngine.load(str(src), template="chatml", dtype="fp32")
    agree, total, rows = greedy_agreement(engine, llm, max_new=12)
    assert rows == 5 and agree == total   # f32: identical greedy continuations
    ids = [5, 40, 41, 42, 100, 200, 300, 17]
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        hf = models.load_model(str(src), dtype="fp32")(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(np.array(llm.scores[: len(ids)]) - hf).max() < 1e-3


def test_bloom_tokenizer_pre_tokenizes_like_llama_cpp_bloom(tmp_path):
    """BLOOM's own tokenizer.json layout (a Split regex, then ByteLevel without a regex) is written as llama.cpp's
    `bloom` pre-tokenizer, and llama.cpp then tokenizes text exactly as the HF tokenizer does."""
    import tiny
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" ?[^(\\s|[.,!?…。,、।۔،])]+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(tiny.CORPUS, trainers.BpeTrainer(vocab_size=600, special_tokens=tiny.SPECIALS,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    src = tmp_path / "bloom-tok"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<|padding|>").save_pretrained(src)
    tiny.build_model("bloom", src, vocab_size=600)
    llm = load_gguf(export_gguf(str(src), tmp_path / "b.gguf", qtype="f32"))
    assert llm.metadata["tokenizer.ggml.pre"] == "bloom"
    hf = AutoTokenizer.from_pretrained(str(src))
    for text in ["What is the capital of France? The capital of France is Paris.", "  two  spaces, and…ellipsis!  ",
                 "下面是一条描述任务的指令。请写出恰当完成该请求的回答。", "def add(a, b):\n    return a + b\n",
                 "你好，世界、 ok।done", "date: 2021-01-01 url: https://web.site/123", "return a+b;"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
            hf(text, add_special_tokens=False)["input_ids"], text


@pytest.mark.slow
def test_embedded_model_f16_greedy_matches(smollm2_path, tmp_path):
    out = export_gguf("smollm2", tmp_path / "smollm2-f16.gguf", qtype="f16")
    llm = load_gguf(out)
    md = llm.metadata
    engine = HFEngine.load("smollm2", dtype="fp32")
    assert md["tokenizer.chat_template"] == engine.tokenizer.chat_template
    assert (int(md["tokenizer.ggml.bos_token_id"]), int(md["tokenizer.ggml.eos_token_id"])) == (1, 2)
    # f16 weights against chatsmith's fp32 engine: top-1 agreement along chatsmith's greedy continuations
    agree, total, rows = greedy_agreement(engine, llm, max_new=16)
    print(f"smollm2 f16: top-1 agreement {agree}/{total}, identical continuations {rows}/5")
    assert agree / total >= 0.95


def test_merged_finetune_export(cli, tiny_llama, tmp_path):
    """A LoRA fine-tune merged by `chatsmith merge`, exported by the CLI: llama.cpp continues like the merged
    model, and the chat template in the file is the training template."""
    from test_merge import make_lora

    from chatsmith.export.merge import merge_adapters
    from chatsmith.templates import get_template
    from chatsmith.templates.jinja import to_jinja

    merged = merge_adapters(str(tiny_llama), [str(make_lora(tiny_llama, tmp_path / "lora", seed=5))],
                            tmp_path / "merged", dtype="fp32")
    out = tmp_path / "ft.gguf"
    r = cli("export", "gguf", "--model", str(merged), "--output", str(out), "--type", "q8_0",
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    r = cli("export", "gguf", "--model", str(merged), "--output", str(out), "--type", "f32")
    assert r.returncode == 2 and "already exists; pass --force" in r.stderr
    llm_q8 = load_gguf(out)
    out32 = export_gguf(str(merged), tmp_path / "ft32.gguf", qtype="f32")
    llm = load_gguf(out32)
    assert llm.metadata["tokenizer.chat_template"] == to_jinja(get_template("chatml"))
    engine = HFEngine.load(str(merged), dtype="fp32")       # template from the merged dir's chatsmith.json
    assert engine.template.name == "chatml"
    agree, total, rows = greedy_agreement(engine, llm, max_new=12)
    assert rows == 5 and agree == total
    # q8_0: 8-bit weights, same model within quantization error (top-1 on a teacher-forced prompt)
    ids = engine.prompt_ids(conversations()[0])
    llm.reset(), llm_q8.reset()
    llm.eval(ids), llm_q8.eval(ids)
    a, b = np.array(llm.scores[: len(ids)]), np.array(llm_q8.scores[: len(ids)])
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9
    assert out.stat().st_size < 0.5 * out32.stat().st_size


def test_unsupported_architecture_is_one_clear_error(cli, tiny_llama, tmp_path):
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "models" / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=600, n_embd=32, n_layer=1, n_head=2)).save_pretrained(gpt2)
    for f in tiny_llama.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, gpt2 / f.name)
    out = tmp_path / "gpt2.gguf"
    r = cli("export", "gguf", "--model", str(gpt2), "--output", str(out))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"chatsmith: {gpt2}: GGUF export supports the llama, gpt_neox, bloom architectures; "
                                "this model is 'gpt2'")
    assert not out.exists()


def test_failure_midway_leaves_no_file(tiny_llama, tmp_path, monkeypatch):
    """An error while writing tensors (here: one with no llama.cpp name) removes the partial file."""
    from chatsmith.errors import ChatsmithError
    from chatsmith.export import gguf as gguf_export

    real = gguf_export._LLAMA_TENSORS

    def with_extra(model):
        yield from real(model)
        yield "model.layers.0.mystery.weight", next(iter(model.state_dict().values()))

    monkeypatch.setitem(gguf_export._TENSORS, "llama", with_extra)
    with pytest.raises(ChatsmithError, match="mystery.weight.* has no llama.cpp name"):
        export_gguf(str(tiny_llama), tmp_path / "x.gguf", qtype="f16")
    assert list(tmp_path.iterdir()) == []


def test_sentencepiece_style_tokenizer_refused(tiny_llama, tmp_path):
    import shutil

    from chatsmith.errors import ChatsmithError

    model = tmp_path / "spm-like"
    shutil.copytree(tiny_llama, model)
    tj = json.loads((model / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    (model / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ChatsmithError, match="byte-level BPE"):
        export_gguf(str(model), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_tiny_llama_sentencepiece_f32_matches_engine(tiny_root, tmp_path, monkeypatch):
    """A LLaMA with a SentencePiece tokenizer (tokenizer.model, byte fallback, two added special tokens), as the
    airoboros seed models are: llama.cpp reads the vicuna prompt text into the same ids and continues it greedily
    token for token like chatsmith, and the vocabulary carries SentencePiece's scores and token types."""
    import gguf
    import sentencepiece
    import tiny

    import shutil

    src = tmp_path / "airoboros-like"     # trained with the airoboros template (chatsmith.json)
    shutil.copytree(tiny.build("llama-sp", tiny_root), src)
    (src / "chatsmith.json").write_text(json.dumps({"template": "airoboros"}))
    out = export_gguf(str(src), tmp_path / "sp.gguf", qtype="f32")
    llm = load_gguf(out)
    md = llm.metadata
    assert (md["tokenizer.ggml.model"], md["tokenizer.ggml.pre"]) == ("llama", "default")
    assert [int(md[f"tokenizer.ggml.{k}_token_id"]) for k in ("bos", "eos", "unknown")] == [1, 2, 0]
    engine = HFEngine.load(str(src), dtype="fp32")
    assert engine.template.name == "airoboros"
    agree, total, rows = greedy_agreement(engine, llm, max_new=12)
    assert rows == 5 and agree == total   # f32: identical greedy continuations
    # byte fallback: text outside the pieces (CJK, emoji) becomes <0xNN> tokens, as in transformers and in
    # SentencePiece itself (which alone also splits a text that starts with a space like llama.cpp: "▁▁" first)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    text = "中文 😀 tab\tand  two spaces\n\n  x"
    assert llm.tokenize(text.encode(), add_bos=True, special=False) == engine.tokenizer(text)["input_ids"]
    # (llama-cpp-python's detokenize keeps the dummy-prefix space that transformers' decoder strips)
    assert llm.detokenize(engine.tokenizer(text, add_special_tokens=False)["input_ids"]).decode() == " " + text
    for t in (text, " " + text, "What is 2+2? 12345"):
        assert llm.tokenize(t.encode(), add_bos=False, special=False) == sp.encode(t)
    # a multi-turn prompt ("</s>USER: ..."): llama.cpp puts the word marker after a special token, like a legacy
    # LLaMA tokenizer, for which chatsmith renders the same ids (a non-legacy one differs there, by design)
    from chatsmith.templates import get_template

    legacy = tiny.build_sp_tokenizer(tmp_path / "legacy-tokenizer", legacy=True)
    turns = Conversation([Message("user", "Hi"), Message("assistant", "Hello! 12"), Message("user", "Again?")])
    r = get_template("airoboros").render(turns, legacy, add_generation_prompt=True)
    assert llm.tokenize(r.text.encode(), add_bos=True, special=True) == r.input_ids == legacy(r.text).input_ids
    # the vocabulary itself: every piece's score and type, the added tokens as control tokens
    r = gguf.GGUFReader(str(out))
    field = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    scores = [float(r.fields["tokenizer.ggml.scores"].parts[i][0]) for i in r.fields["tokenizer.ggml.scores"].data]
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in r.fields["tokenizer.ggml.token_type"].data]
    assert len(tokens) == len(engine.tokenizer) == sp.vocab_size() + len(tiny.SP_ADDED)
    assert tokens[:sp.vocab_size()] == [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    assert scores[:sp.vocab_size()] == pytest.approx([sp.GetScore(i) for i in range(sp.vocab_size())])
    assert tokens[sp.vocab_size():] == tiny.SP_ADDED
    assert types[sp.vocab_size():] == [gguf.TokenType.CONTROL] * 2 and types[:3] == [
        gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert tokens.index("<0x41>") == sp.PieceToId("<0x41>") and types[tokens.index("<0x41>")] == gguf.TokenType.BYTE
    # chatsmith's own llama.cpp backend on the file (tokenizer read back from the GGUF by transformers): the same
    # ids and greedy answers as the transformers engine, a multi-turn conversation included
    from chatsmith.engine.llamacpp import LlamaCppEngine

    monkeypatch.setenv("CHATSMITH_CACHE", str(tmp_path / "cache"))
    lc = LlamaCppEngine.load(str(out), template="airoboros", n_threads=1)
    convs = [*conversations()[:2], Conversation([Message("user", "Hi"), Message("assistant", "Hello! 12"),
                                                 Message("user", "Again?")])]
    assert [lc.prompt_ids(c) for c in convs] == [engine.prompt_ids(c) for c in convs]
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    assert ([(r.token_ids, r.text) for r in lc.generate(convs, greedy)]
            == [(r.token_ids, r.text) for r in engine.generate(convs, greedy)])
    lc.close()
    # the chat template in the file renders what chatsmith prompts with (generation prompt ending "ASSISTANT:",
    # BOS included since this tokenizer adds one), through llama-cpp-python's own Jinja chat formatter
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(md["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Blue?")])
    prompt = fmt(messages=[m.to_dict() for m in conv.messages]).prompt
    assert prompt == "<s>" + engine.template.render_text(conv, add_generation_prompt=True)
    assert prompt.endswith("</s>USER: Blue? ASSISTANT:")


def test_sentencepiece_from_tokenizer_json_only(tiny_root, tmp_path):
    """A fine-tuned or merged LLaMA saved by transformers has tokenizer.json but no tokenizer.model: the scores
    come from tokenizer.json's merges, and llama.cpp still splits text exactly as SentencePiece does and
    continues prompts like chatsmith."""
    import shutil

    import sentencepiece
    import tiny

    src = tmp_path / "finetuned"
    shutil.copytree(tiny.build("llama-sp", tiny_root), src)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    (src / "tokenizer.model").unlink()
    llm = load_gguf(export_gguf(str(src), tmp_path / "ft.gguf", qtype="f32"))
    assert llm.metadata["tokenizer.ggml.model"] == "llama"
    texts = [*dict.fromkeys(tiny.CORPUS), " 中文 😀 tab\tand  two spaces", "What is 2+2? 12345", "x\n\n  y",
             "ENDINSTRUCTION\n ASSISTANT: Blue"]
    assert [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts] == [sp.encode(t) for t in texts]
    engine = HFEngine.load(str(src), template="airoboros", dtype="fp32")
    agree, total, rows = greedy_agreement(engine, llm, max_new=8)
    assert rows == 5 and agree == total
