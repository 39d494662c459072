"""The transformers engine on the tiny random models: batching equals batch-1, seeds reproduce, stops stop."""

from __future__ import annotations

import os

import pytest
import torch

from chatsmith.conversation import Conversation, Message
from chatsmith.engine.base import SamplingParams
from chatsmith.engine.transformers_engine import HFEngine
from chatsmith.engine.stops import StopTextStream
from chatsmith.errors import ChatsmithError, ContextLengthError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

PROMPTS = [Conversation.single(t) for t in
           ("hello", "What is the capital of France?", "The quick brown fox jumps over the lazy dog. " * 3,
            "def add(a, b):")]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def engines(tiny_root):
    import tiny

    return {arch: HFEngine.load(str(tiny.build(arch, tiny_root)), template="vicuna_v1.1", dtype="fp32")
            for arch in ("llama", "gpt_neox", "bloom")}


@pytest.fixture(scope="module")
def llama(engines):
    return engines["llama"]


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "bloom"])
def test_batched_greedy_equals_batch_of_one(engines, arch):
    eng = engines[arch]
    solo = [eng.generate([c], GREEDY)[0] for c in PROMPTS]
    batch = eng.generate(PROMPTS, GREEDY)
    assert [r.token_ids for r in batch] == [r.token_ids for r in solo]
    assert [r.text for r in batch] == [r.text for r in solo]
    assert all(r.completion_tokens >= 1 or r.finish_reason == "stop" for r in batch)
    assert [r.prompt_tokens for r in batch] == [len(eng.prompt_ids(c)) for c in PROMPTS]


def test_stream_yields_token_by_token_and_matches_generate(llama):
    p = SamplingParams(max_new_tokens=10, temperature=0, stop_ids=[])
    deltas = list(llama.stream([PROMPTS[0]], p))
    whole = llama.generate([PROMPTS[0]], p)[0]
    assert "".join(d.text for d in deltas) == whole.text
    assert [d.token_id for d in deltas if d.token_id is not None] == whole.token_ids
    assert deltas[-1].finish_reason == whole.finish_reason
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert whole.finish_reason == "length" and len(deltas) == 10 and whole.completion_tokens == 10


def test_max_new_tokens_gives_length(llama):
    ids = llama.prompt_ids(PROMPTS[1])     # token ids are a prompt too
    res = llama.generate([ids], SamplingParams(max_new_tokens=5, temperature=0))[0]
    assert res.finish_reason == "length" and res.completion_tokens == 5 and len(res.token_ids) == 5


def test_stop_string_ends_generation_and_is_not_emitted(llama):
    base = llama.generate([PROMPTS[2]], SamplingParams(max_new_tokens=24, temperature=0))[0]
    assert len(base.text) > 8, base
    stop = base.text[4:7]          # a string that appears in the middle of the answer
    cut = base.text.index(stop)
    res = llama.generate([PROMPTS[2]], SamplingParams(max_new_tokens=24, temperature=0, stop=[stop]))[0]
    assert res.finish_reason == "stop"
    assert res.text == base.text[:cut]
    assert stop not in res.text
    # streamed: no delta ever shows any part of the stop string past the cut
    streamed = "".join(d.text for d in llama.stream([PROMPTS[2]], SamplingParams(max_new_tokens=24, temperature=0,
                                                                                  stop=[stop])))
    assert streamed == base.text[:cut]


def test_stop_id_ends_generation_and_is_not_emitted(llama):
    base = llama.generate([PROMPTS[3]], SamplingParams(max_new_tokens=16, temperature=0))[0]
    assert len(base.token_ids) > 4, base
    stop_id = base.token_ids[3]
    first = base.token_ids.index(stop_id)
    res = llama.generate([PROMPTS[3]], SamplingParams(max_new_tokens=16, temperature=0, stop_ids=[stop_id]))[0]
    assert res.finish_reason == "stop"
    assert res.token_ids == base.token_ids[:first]
    # vicuna's answers start with the space after "ASSISTANT:" (FastChat), which is not part of the text
    # (and a cut inside a UTF-8 sequence drops the incomplete character: StopTextStream.flush)
    assert res.text == llama.tokenizer.decode(base.token_ids[:first]).removeprefix(" ").rstrip("\ufffd")


def test_template_stop_ids_are_always_honoured(llama):
    # </s> is the vicuna end marker: if the model ever emits it, the answer ends there without it
    _, ids = llama.stops(SamplingParams())
    assert llama.tokenizer.convert_tokens_to_ids("</s>") in ids
    for r in llama.generate(PROMPTS, SamplingParams(max_new_tokens=40, temperature=0)):
        assert "</s>" not in r.text and not set(r.token_ids) & set(ids)


def test_per_row_params_and_finish_reasons(llama):
    params = [SamplingParams(max_new_tokens=n, temperature=0) for n in (2, 7, 1, 4)]
    batch = llama.generate(PROMPTS, params)
    solo = [llama.generate([c], p)[0] for c, p in zip(PROMPTS, params)]
    assert [r.token_ids for r in batch] == [r.token_ids for r in solo]
    for r, p in zip(batch, params):
        assert r.finish_reason in ("stop", "length")
        assert r.completion_tokens <= p.max_new_tokens
        if r.finish_reason == "length":
            assert r.completion_tokens == p.max_new_tokens


def test_sampling_is_reproducible_per_seed_and_independent_of_batch(llama):
    p = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, top_k=100, seed=1234, stop_ids=[])
    a = llama.generate([PROMPTS[0]], p)[0]
    b = llama.generate([PROMPTS[0]], p)[0]
    assert a.token_ids == b.token_ids
    in_batch = llama.generate(PROMPTS, [p, *[SamplingParams(max_new_tokens=12, temperature=0.8, seed=s)
                                           for s in (1, 2, 3)]])[0]
    assert in_batch.token_ids == a.token_ids
    others = {tuple(llama.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12, temperature=1.0, seed=s))[0]
                    .token_ids) for s in range(4)}
    assert len(others) > 1            # different seeds give different samples


def test_top_k_one_is_greedy_and_penalty_matches_transformers(llama):
    greedy = llama.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12, temperature=0))[0]
    k1 = llama.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12, temperature=1.5, top_k=1, seed=5))[0]
    assert k1.token_ids == greedy.token_ids
    tiny_p = llama.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=9))[0]
    assert tiny_p.token_ids == greedy.token_ids      # top_p keeps at least the best token
    pen = SamplingParams(max_new_tokens=12, temperature=0, repetition_penalty=5.0)
    penalized = llama.generate([PROMPTS[0]], pen)[0]
    # the reference: transformers' own generate, greedy, with and without its repetition penalty
    ids = torch.tensor([llama.prompt_ids(PROMPTS[0])])
    for ours, kw in ((greedy, {}), (penalized, {"repetition_penalty": 5.0})):
        ref = llama.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                   eos_token_id=None, pad_token_id=llama.pad_id, **kw)[0, ids.shape[1]:].tolist()
        assert ours.token_ids == ref
    assert greedy.token_ids[-3:] == [344] * 3            # this tiny model loops on one token...
    assert len(set(penalized.token_ids)) == len(penalized.token_ids)   # ...which the penalty breaks
    # a penalized row in a batch with unpenalized neighbours gets the same answer as alone
    mixed = llama.generate([PROMPTS[1], PROMPTS[0]], [GREEDY, pen])
    assert mixed[1].token_ids == penalized.token_ids
    assert mixed[0].token_ids == llama.generate([PROMPTS[1]], GREEDY)[0].token_ids


def test_cancel_callback_stops_a_row(llama):
    p = SamplingParams(max_new_tokens=30, temperature=0, stop_ids=[])
    deltas = list(llama.stream(PROMPTS[:2], [p, p], cancelled=lambda i: i == 1))
    row1 = [d for d in deltas if d.index == 1]
    assert row1[-1].finish_reason == "cancelled"
    assert len(row1) <= 2              # the first token (from prefill), then cancelled at the next step


def test_bad_params_and_context_overflow_are_clear_errors(llama):
    with pytest.raises(ChatsmithError, match="temperature"):
        llama.generate([PROMPTS[0]], SamplingParams(temperature=-1))
    with pytest.raises(ChatsmithError, match="top_p"):
        llama.generate([PROMPTS[0]], SamplingParams(top_p=0))
    with pytest.raises(ContextLengthError, match="max_new_tokens=600"):
        llama.generate([PROMPTS[0]], SamplingParams(max_new_tokens=600))
    with pytest.raises(ContextLengthError, match="empty"):
        llama.generate([[]], GREEDY)


def test_stop_text_stream_holds_back_possible_stop_prefixes(tiny_tokenizer):
    ids = tiny_tokenizer("hello USER: bye", add_special_tokens=False).input_ids
    s = StopTextStream(tiny_tokenizer, ["USER:"])
    out = "".join(s.add(i) for i in ids)
    assert s.stopped and out == "hello "
    # a prefix of a stop string that never completes is released at the end
    ids = tiny_tokenizer("hello US", add_special_tokens=False).input_ids
    s = StopTextStream(tiny_tokenizer, ["USER:"])
    out = "".join(s.add(i) for i in ids)
    assert out + s.flush() == "hello US" and not s.stopped


def test_answer_prefix_is_dropped_from_the_text(tiny_tokenizer, llama):
    """vicuna prompts end "ASSISTANT:" and the model writes " Blue": the text is "Blue", streamed or not, and a
    stop string right after still stops; without a lead (other templates) the space stays."""
    ids = tiny_tokenizer(" Blue sky USER: bye", add_special_tokens=False).input_ids
    s = StopTextStream(tiny_tokenizer, ["USER:"], lead=" ")
    pieces = [s.add(i) for i in ids]
    assert "".join(pieces) == "Blue sky " and pieces[0] == "Bl" and s.stopped
    s = StopTextStream(tiny_tokenizer, ["USER:"])
    assert "".join(s.add(i) for i in ids) == " Blue sky "
    s = StopTextStream(tiny_tokenizer, [], lead=" ")
    assert "".join(s.add(i) for i in tiny_tokenizer(" ", add_special_tokens=False).input_ids * 2) == " "
    assert llama.template.answer_prefix == " "
    # "The capital of France is" as a text completion (raw_text, /v1/completions) keeps its leading space
    from dataclasses import replace

    prompts = [*PROMPTS, *(llama.tokenizer(t).input_ids for t in ("The capital of France is", "hello USER: x"))]
    chat, raw = llama.generate(prompts, GREEDY), llama.generate(prompts, replace(GREEDY, raw_text=True))
    assert [r.token_ids for r in chat] == [r.token_ids for r in raw]
    spaced = 0
    for c, r in zip(chat, raw):
        full = llama.tokenizer.decode(c.token_ids).rstrip("\ufffd")   # flush drops a cut UTF-8 sequence
        assert c.text == (full[1:] if full.startswith(" ") else full) and r.text == full
        spaced += full.startswith(" ")
    assert spaced, "the test needs an answer that starts with a space"


def test_bf16_engine_runs_and_auto_dtype(tiny_llama):
    from chatsmith import models

    eng = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    assert eng.model.dtype == torch.bfloat16
    r = eng.generate(PROMPTS[:2], GREEDY)
    assert all(x.finish_reason in ("stop", "length") for x in r)
    want = torch.bfloat16 if models.cpu_has_fast_bf16() else torch.float32
    assert models.resolve_dtype("auto") == want


def native_kernels(amx: bool, monkeypatch) -> None:
    """Use the native step with AMX tiles or with AVX512-BF16 (skips where this CPU cannot; on a CPU that can, a
    kernel that does not build is a failure)."""
    from chatsmith import cpu
    from chatsmith.engine import kernels

    if not cpu.avx512_bf16() or os.environ.get("CHATSMITH_KERNELS") == "0":
        pytest.skip("this CPU has no AVX512-BF16 (chatsmith.cpu), or CHATSMITH_KERNELS=0")
    assert kernels.why_not() is None, f"a CPU with AVX512-BF16, yet no kernel: {kernels.why_not()}"
    if amx and not kernels.amx():
        pytest.skip("no AMX here")
    monkeypatch.setitem(kernels._state, "amx", amx)


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "avx512"])
def test_lean_llama_step_matches_transformers_and_keeps_bf16_batches_exact(tiny_llama, engines, amx, monkeypatch):
    from chatsmith.engine.lean_llama import LeanLlamaDecoder

    native_kernels(amx, monkeypatch)
    assert engines["llama"].lean is not None
    assert engines["gpt_neox"].lean is None and engines["bloom"].lean is None    # the generic path
    bf = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    assert bf.lean is not None and bf.lean.native is not None and bf.lean.native.amx == amx
    if torch.backends.mkldnn.is_available() and not amx:
        assert bf.lean.matmul.endswith("oneDNN prepacked")     # prefill and big batches: weights packed for oneDNN
    if amx:                                                    # the tile-packed copy is the one extra copy
        assert bf.lean.matmul.endswith("torch")
    plain = HFEngine(bf.model, bf.tokenizer, bf.template, lean=False)
    torch_only = HFEngine(bf.model, bf.tokenizer, bf.template, lean=False)
    torch_only.lean = LeanLlamaDecoder(bf.model, kernel=False)
    solo = [torch_only.generate([c], GREEDY)[0].token_ids for c in PROMPTS]
    # batch-1: the lean step on torch's matmuls and transformers' forward agree token for token
    assert [plain.generate([c], GREEDY)[0].token_ids for c in PROMPTS] == solo
    # bf16 batches decode exactly like batch 1 (attention never reduces over padding), on either matmul
    assert [r.token_ids for r in torch_only.generate(PROMPTS, GREEDY)] == solo
    solo_k = [bf.generate([c], GREEDY)[0].token_ids for c in PROMPTS]
    assert [r.token_ids for r in bf.generate(PROMPTS, GREEDY)] == solo_k


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "avx512"])
def test_native_step_is_close_to_transformers(tiny_llama, amx, monkeypatch):
    """The native step sums in another order than oneDNN: decode logits agree to bf16 rounding, not bit for bit."""
    native_kernels(amx, monkeypatch)
    bf = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    ids = bf.prompt_ids(PROMPTS[1])
    with torch.inference_mode():
        out = bf.model(input_ids=torch.tensor([ids[:-1]]), use_cache=True)
        want = bf.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        got = bf.lean.step(torch.tensor([[ids[-1]]]), torch.tensor([[len(ids) - 1]]), [0],
                           out.past_key_values)[0].float()
    scale = want.abs().max()
    assert (got - want).abs().max() <= 0.05 * scale, (got - want).abs().max()
    assert torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.999


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "avx512"])
def test_prompts_prefilled_together_get_the_caches_and_logits_of_a_prefill_alone(tiny_llama, amx, monkeypatch):
    """With the native kernel a burst of prompts is prefilled in one pass (without AMX: oneDNN on fixed blocks of
    rows, the last positions on the row-by-row GEMV); each prompt's logits and every layer's keys and values are
    bit-identical to its prefill alone, and a batch's add_many makes one pass for the whole burst."""
    from chatsmith.engine import lean_llama

    native_kernels(amx, monkeypatch)
    monkeypatch.setattr(lean_llama, "PREFILL_TILE", 8)         # several blocks, and a short last one, per pass
    eng = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    assert eng.lean.group_prefill
    ids = [eng.prompt_ids(c) for c in PROMPTS]
    assert len({len(i) for i in ids}) > 2 and sum(map(len, ids)) % 8
    with torch.inference_mode():
        alone = [eng.lean.prefill([i])[0] for i in ids]
        together = eng.lean.prefill(ids)
    for (la, ca), (lt, ct) in zip(alone, together):
        assert torch.equal(la, lt)
        for a, t in zip(ca.layers, ct.layers):
            assert torch.equal(a.keys, t.keys) and torch.equal(a.values, t.values)
    passes = []
    real = eng.lean.prefill
    monkeypatch.setattr(eng.lean, "prefill",
                        lambda prompts, pasts=None: passes.append(len(prompts)) or real(prompts, pasts))
    from chatsmith.engine.prompt_cache import PromptCache

    eng.prompt_cache = PromptCache(0)   # no cache: no shared start prefilled first (the cold-burst test has that)
    batch = eng.new_batch()
    events = batch.add_many([(i, p, GREEDY) for i, p in enumerate(ids)])
    assert passes == [len(ids)] and [e.token_id for e in events] == [int(la.argmax()) for la, _ in alone]


def test_prefill_rows_are_whole_only_where_that_gives_the_blocks_bits():
    """_in_tiles compares a whole call with blocks of `rows` the first time a shape comes: equal, later calls are
    whole (one call); a GEMM whose rows change with the row count keeps the blocks, so results never depend on it."""
    from chatsmith.engine.lean_llama import _in_tiles

    w = torch.randint(-3, 4, (5, 6)).float()
    x = torch.randint(-3, 4, (1, 10, 6)).float()              # 10 rows: blocks of 4, the last one padded
    want = x @ w.T
    calls = []

    def exact(a, b):                                          # small integers: every row exact at any count
        calls.append(a.shape[1])
        return a @ b.T

    lin = _in_tiles(exact, 4)
    assert torch.equal(lin(x, w), want) and calls == [12, 4, 4, 4]    # first time: the whole call and the blocks
    calls.clear()
    assert torch.equal(lin(x, w), want) and calls == [12]
    assert list(lin.whole_ok.values()) == [True]

    def drifting(a, b):                                       # rows that change with how many there are
        calls.append(a.shape[1])
        return a @ b.T + (a.shape[1] > 4)

    lin = _in_tiles(drifting, 4)
    calls.clear()
    assert torch.equal(lin(x, w), want) and torch.equal(lin(x, w), want)
    assert calls == [12, 4, 4, 4, 4, 4, 4] and list(lin.whole_ok.values()) == [False]
    assert torch.equal(lin(x[:, :3], w), want[:, :3])         # one block: nothing to compare


def test_kv_buffers_regrow_without_changing_a_token(tiny_llama, monkeypatch):
    """The cache buffers grow CACHE_GROWTH columns at a time; growing every 3 tokens decodes the same tokens."""
    from chatsmith.engine import kvcache

    eng = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    params = SamplingParams(max_new_tokens=40, temperature=0, stop_ids=[])
    want = [r.token_ids for r in eng.generate(PROMPTS, params)]
    monkeypatch.setattr(kvcache, "CACHE_GROWTH", 3)
    assert [r.token_ids for r in eng.generate(PROMPTS, params)] == want
    assert sum(len(t) for t in want) > 40


def test_kv_cache_views_are_made_when_read_and_an_assignment_detaches_the_layer(tiny_llama):
    """After decode steps a layer's keys and values are the buffer's first columns, as many as were decoded, made
    when read; assigning either (DecodeBatch joining or dropping rows) makes the layer a plain DynamicLayer holding
    what it was given, and the next reserve builds new buffers from it."""
    from transformers.cache_utils import DynamicLayer

    from chatsmith.engine import kvcache

    eng = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    ids = eng.prompt_ids(PROMPTS[1])
    with torch.inference_mode():
        (logits, cache), = eng.lean.prefill([ids])
        plain_keys = [la.keys.clone() for la in cache.layers]
        n = len(ids)
        for t in range(5):
            eng.lean.step(torch.tensor([[7 + t]]), torch.tensor([[n + t]]), [0], cache)
        bufs, col = kvcache.reserve(cache)
        assert col == n + 5
        for la, (kb, vb), before in zip(cache.layers, bufs, plain_keys):
            assert type(la) is not DynamicLayer and isinstance(la, DynamicLayer)
            assert la.keys.shape[-2] == la.values.shape[-2] == n + 5 == la.get_seq_length()
            assert la.keys.data_ptr() == kb.data_ptr() and la.values.data_ptr() == vb.data_ptr()
            assert torch.equal(la.keys[:, :, :n], before)
        first = cache.layers[0]
        kept_values = first.values
        first.keys = first.keys[:, :, 2:]
        assert type(first) is DynamicLayer and first.keys.shape[-2] == n + 3
        assert first.values is kept_values and first.values.shape[-2] == n + 5
        assert not any(name.startswith("_cs_") for name in vars(first))
        first.keys, first.values = first.keys[:, :, :n], first.values[:, :, :n]
        for la in cache.layers[1:]:
            la.keys, la.values = la.keys[:, :, :n], la.values[:, :, :n]
        new_bufs, col = kvcache.reserve(cache)
        assert col == n and new_bufs[0][0].data_ptr() != bufs[0][0].data_ptr()
        assert torch.equal(cache.layers[1].keys, plain_keys[1]) and type(cache.layers[1]) is not DynamicLayer
        assert kvcache.reserve(cache)[0] is new_bufs                     # nothing changed: the same buffers
        replaced = DynamicLayer()                                        # a layer swapped in the list, not assigned
        replaced.lazy_initialization(cache.layers[-1].keys, cache.layers[-1].values)
        replaced.keys, replaced.values = cache.layers[-1].keys.clone(), cache.layers[-1].values.clone()
        cache.layers[-1] = replaced
        assert kvcache.reserve(cache)[0] is not new_bufs and type(cache.layers[-1]) is not DynamicLayer


def test_argmax_matches_torch_on_ties_nans_and_infinities():
    from chatsmith.engine.transformers_engine import _argmax

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (64, 4099), generator=g).float()          # many ties: the first index wins
    x[5, 7] = x[9, 4000] = float("nan")                                # a NaN counts as the largest
    x[11] = float("-inf")
    x[12, 100:] = float("inf")
    assert torch.equal(_argmax(x), x.argmax(-1))
    assert torch.equal(_argmax(x[:1]), x[:1].argmax(-1)) and _argmax(x).dtype == torch.long


def test_rotary_table_equals_the_module_per_step_and_is_not_used_for_dynamic_rope(tiny_llama, monkeypatch):
    from chatsmith.engine.kernels import llama as native

    native_kernels(False, monkeypatch)
    monkeypatch.setattr(native, "ROTARY_TABLE_START", 16)
    eng = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    step = eng.lean.native
    h = torch.zeros(3, eng.model.config.hidden_size, dtype=torch.bfloat16)
    with torch.inference_mode():
        for positions in ([[0], [5], [15]], [[3], [40], [16]], [[1000], [2], [999]]):   # past 16: the table grows
            pos = torch.tensor(positions)
            got = step._rotary(h, pos)
            want = eng.lean.rotary(h.unsqueeze(1), pos)
            assert all(torch.equal(g, w.reshape(3, -1)) for g, w in zip(got, want))
        assert step._rot_table[0].shape[0] == 1001
        monkeypatch.setattr(eng.lean.rotary, "rope_type", "dynamic")
        assert step._build_rot_table(h, 16) is None


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "bloom"])
def test_a_repeated_prompt_skips_its_prefill_and_answers_bit_identically(engines, arch, monkeypatch):
    from chatsmith.engine.prompt_cache import PromptCache

    eng = engines[arch]
    eng.prompt_cache = PromptCache()
    first = eng.generate(PROMPTS, GREEDY)              # prefilled, then decoded (the batch writes its cache in place)
    assert (eng.prompt_cache.hits, len(eng.prompt_cache)) == (0, len(PROMPTS))
    forwards = []
    if eng.lean is not None:
        monkeypatch.setattr(eng.lean, "prefill", lambda *a: forwards.append(a) or [])
    else:
        monkeypatch.setattr(eng.new_batch().__class__, "_forward", lambda *a: forwards.append(a))
    again = eng.generate(PROMPTS[::-1], GREEDY)        # no forward pass at all: every prompt is a hit
    assert forwards == [] and eng.prompt_cache.hits == len(PROMPTS)
    assert [r.token_ids for r in again[::-1]] == [r.token_ids for r in first]
    monkeypatch.undo()
    # the stored copy is what a fresh prefill computes, bit for bit, after the decoding above
    ids = eng.prompt_ids(PROMPTS[2])
    logits, cache = eng.prompt_cache.get(ids, eng.new_cache)
    eng.prompt_cache = PromptCache(0)                  # off: always a fresh prefill
    with torch.inference_mode():
        fresh_logits, fresh = (eng.lean.prefill([ids])[0] if eng.lean is not None
                               else eng.new_batch()._forward(ids))
    assert torch.equal(logits, fresh_logits)
    assert all(torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
               for a, b in zip(cache.layers, fresh.layers))
    assert eng.generate([PROMPTS[2]], GREEDY)[0].token_ids == first[2].token_ids
    assert eng.prompt_cache.hits == 0 and len(eng.prompt_cache) == 0
    eng.prompt_cache = PromptCache()


def test_prompt_cache_prefix_is_the_longest_shared_start():
    """PromptCache.prefix: the entry sharing the longest start (at least min_tokens), capped so one token is left to
    compute; the entry's own tensors; the entry becomes the most recently used."""
    from chatsmith.engine.prompt_cache import PromptCache

    class Layer:
        def __init__(self, n):
            self.keys, self.values = torch.zeros(1, 1, n, 2), torch.ones(1, 1, n, 2)

    class Cache:
        def __init__(self, n):
            self.layers = [Layer(n)]

    pc = PromptCache(10**6)
    for ids in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 9, 9], [7, 7, 7, 7]):
        pc.put(ids, torch.zeros(1, 4), Cache(len(ids)))
    n, layers = pc.prefix([1, 2, 3, 4, 5, 8, 8], min_tokens=3)
    assert n == 5 and layers[0][0] is pc._entries[(1, 2, 3, 4, 5, 6)][1][0][0]
    assert next(reversed(pc._entries)) == (1, 2, 3, 4, 5, 6)
    assert pc.prefix([1, 2, 3, 9, 9, 9, 9], min_tokens=3)[0] == 6          # itself, less its last token
    assert pc.prefix([1, 2, 3, 4], min_tokens=3)[0] == 3
    assert pc.prefix([1, 2, 8, 8, 8], min_tokens=3) is None                   # shares only 2
    assert pc.prefix([1, 2, 3], min_tokens=3) is None                         # nothing would be left to compute
    assert (pc.prefix_hits, pc.prefix_tokens) == (3, 14)
    assert PromptCache(0).prefix([1, 2, 3, 4, 5, 6], min_tokens=1) is None


SYSTEM = "You answer briefly and you never make anything up. " * 2


def convs(*questions: str) -> list[Conversation]:
    return [Conversation([Message("user", q)], system=SYSTEM) for q in questions]


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "avx512"])
def test_a_cold_burst_prefills_its_shared_start_once(tiny_llama, amx, monkeypatch):
    """New prompts that share a start (a system prompt) and find nothing cached: the start is prefilled once on its
    own and cached, then every prompt computes only the rest; the answers are those of whole prefills. A later
    burst with the same start does not prefill it again."""
    import os

    from chatsmith.engine.prompt_cache import PromptCache

    native_kernels(amx, monkeypatch)
    eng = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    burst = convs("hello", "What is 2+2?", "Name a colour.", "def add(a, b):")
    eng.prompt_cache = PromptCache(0)
    want = [r.token_ids for r in eng.generate(burst, GREEDY)]
    ids = [eng.prompt_ids(c) for c in burst]
    n = len(os.path.commonprefix(ids))
    assert n >= 20
    eng.prompt_cache = PromptCache()
    calls = []
    real = eng.lean.prefill

    def prefill(prompts, pasts=None):
        calls.append(([len(x) for x in prompts], [p and p[0] for p in pasts or [None] * len(prompts)]))
        return real(prompts, pasts)

    monkeypatch.setattr(eng.lean, "prefill", prefill)
    assert [r.token_ids for r in eng.generate(burst, GREEDY)] == want
    assert calls == [([n], [None]), ([len(i) for i in ids], [n] * len(ids))]
    calls.clear()
    eng.generate(convs("Why is the sky blue?", "Count to three."), GREEDY)
    assert len(calls) == 1 and all(k >= n for k in calls[0][1])        # the start: cached, not computed


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "avx512"])
def test_a_prompt_that_starts_like_a_cached_one_reuses_it_bit_identically(tiny_llama, amx, monkeypatch):
    """With the native attention a prompt sharing a cached prompt's start (here a long system prompt) prefills only
    the rest: its logits, every layer's keys and values and its greedy answer are those of a whole prefill, alone
    or grouped, and the same with the reuse left out."""
    from chatsmith.engine.prompt_cache import PromptCache

    native_kernels(amx, monkeypatch)
    eng = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    assert eng.lean.prefix_reuse
    earlier, later = convs("hello", "What is 2+2?"), convs("Name a colour.", "def add(a, b):", "Why is the sky blue?")
    eng.prompt_cache = PromptCache(0)                                    # off: whole prefills
    want = [r.token_ids for r in eng.generate(later, GREEDY)]
    ids = [eng.prompt_ids(c) for c in later]
    with torch.inference_mode():
        whole = eng.lean.prefill(ids)
    eng.prompt_cache = PromptCache()
    eng.generate(earlier, GREEDY)
    pasts = [eng.prompt_cache.prefix(i) for i in ids]
    assert all(p is not None and p[0] >= 20 for p in pasts)
    with torch.inference_mode():
        reused = eng.lean.prefill(ids, pasts)
        reused_alone = [eng.lean.prefill([i], [p])[0] for i, p in zip(ids, pasts)]
    for got in (reused, reused_alone):
        for (lg, cg), (lw, cw) in zip(got, whole):
            assert torch.equal(lg, lw)
            assert all(torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
                       for a, b in zip(cg.layers, cw.layers))
    hits = eng.prompt_cache.prefix_hits
    assert [r.token_ids for r in eng.generate(later, GREEDY)] == want
    assert eng.prompt_cache.prefix_hits == hits + len(later)
    with pytest.raises(ValueError, match="at least one token"):
        eng.lean.prefill([ids[0]], [(len(ids[0]), pasts[0][1])])
    eng.lean.attend_ranges = None                                         # torch's attention: whole prompts only
    with pytest.raises(ValueError, match="no cached prefixes"):
        eng.lean.prefill(ids, pasts)


def test_prompt_cache_is_bounded_and_can_be_turned_off(llama, monkeypatch):
    from chatsmith.engine.prompt_cache import PromptCache

    one = PromptCache()
    llama.prompt_cache = one
    llama.generate(PROMPTS[:1], GREEDY)
    size = one.bytes
    assert size > 0
    llama.prompt_cache = PromptCache(int(2.5 * size))  # room for two prompts of that size
    for c in PROMPTS:
        llama.generate([c], GREEDY)
    assert llama.prompt_cache.bytes <= 2.5 * size and len(llama.prompt_cache) <= 2
    assert tuple(llama.prompt_ids(PROMPTS[-1])) in llama.prompt_cache._entries   # the latest stays
    monkeypatch.setenv("CHATSMITH_PROMPT_CACHE_MB", "0")
    llama.prompt_cache = PromptCache()
    llama.generate(PROMPTS[:1], GREEDY)
    llama.generate(PROMPTS[:1], GREEDY)
    assert len(llama.prompt_cache) == 0 and llama.prompt_cache.hits == 0
    monkeypatch.setenv("CHATSMITH_PROMPT_CACHE_MB", "lots")
    with pytest.raises(ChatsmithError, match="CHATSMITH_PROMPT_CACHE_MB"):
        PromptCache()
    llama.prompt_cache = PromptCache(10**9)
