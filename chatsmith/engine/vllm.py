"""The vLLM backend for GPUs (an optional extra: pip install 'chatsmith[vllm]').

Same interface as the other engines: prompts are rendered by our template into token ids and handed to vLLM as
token prompts, so the prompt format is exactly the transformers backend's; the template's stop ids and strings
are passed as vLLM stop criteria. Streaming drives vLLM's LLMEngine step by step (add_request / step /
abort_request), so a cancelled row is aborted at the next step. LoRA adapters go through vLLM's LoRARequest.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from chatsmith.engine.base import Delta, Engine, Prompt, SamplingParams
from chatsmith.errors import ModelLoadError

_request_ids = itertools.count()


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ModelLoadError("the vllm backend needs vLLM on a machine with a GPU: pip install 'chatsmith[vllm]' "
                             "(on CPU use --backend transformers or llamacpp)") from None
    return vllm


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, llm: Any, tokenizer: Any, template: Any, max_context: int, lora: Any = None):
        self.llm = llm
        self.tokenizer = tokenizer
        self.template = template
        self.max_context = max_context
        self.lora = lora

    @classmethod
    def load(cls, model: str = "smollm2", adapters: list[str] | None = None, template: str | None = None,
             system: str | None = None, gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
             dtype: str = "auto", **_: Any) -> VLLMEngine:
        vllm = _import_vllm()
        from chatsmith import models
        from chatsmith.engine import pick_template

        ref = models.resolve(model, adapters)
        if len(ref.adapters) > 1:
            raise ModelLoadError("the vllm backend applies one LoRA adapter; merge the others first (chatsmith merge)")
        tok = models.load_tokenizer(ref)
        tpl = pick_template(template, ref.meta, tok)
        if system is not None:
            tpl = tpl.with_system(system)
        kwargs: dict[str, Any] = {"model": str(ref.path), "tokenizer": str(ref.path), "dtype": dtype,
                                  "gpu_memory_utilization": gpu_memory_utilization}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        lora = None
        if ref.adapters:
            from vllm.lora.request import LoRARequest

            kwargs["enable_lora"] = True
            lora = LoRARequest("adapter", 1, str(ref.adapters[0]))
        try:
            llm = vllm.LLM(**kwargs)
        except Exception as e:
            raise ModelLoadError(f"{ref.path}: vLLM cannot load this model ({type(e).__name__}: {str(e)[:300]})") \
                from None
        max_context = int(llm.llm_engine.model_config.max_model_len)
        return cls(llm, tok, tpl, max_context, lora)

    def fatal(self, error: BaseException) -> bool:
        """vLLM's engine core runs in its own process; once it is gone (EngineDeadError) every request fails."""
        return type(error).__name__ == "EngineDeadError" or super().fatal(error)

    def _vllm_params(self, p: SamplingParams) -> Any:
        vllm = _import_vllm()
        strings, ids = self.stops(p)
        return vllm.SamplingParams(
            n=1, max_tokens=p.max_new_tokens, temperature=max(p.temperature, 0.0), top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else -1, repetition_penalty=p.repetition_penalty, seed=p.seed,
            stop=strings or None, stop_token_ids=ids or None, skip_special_tokens=True)

    def stream(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams],
               cancelled: Any = None) -> Iterator[Delta]:
        from vllm.inputs import TokensPrompt

        ids, plist = self.checked_batch(prompts, params)
        engine = self.llm.llm_engine
        batch = next(_request_ids)
        rids = [f"chatsmith-{batch}-{i}" for i in range(len(ids))]
        index = {rid: i for i, rid in enumerate(rids)}
        stop_ids = [set(self.stops(p)[1]) for p in plist]
        sent_chars = [0] * len(ids)
        sent_tokens = [0] * len(ids)
        live: set[str] = set()
        try:
            for rid, p_ids, p in zip(rids, ids, plist):   # a request vLLM refuses leaves none of the others behind
                engine.add_request(rid, TokensPrompt(prompt_token_ids=p_ids), self._vllm_params(p),
                                   lora_request=self.lora)
                live.add(rid)
            while live and engine.has_unfinished_requests():
                if cancelled is not None:
                    gone = [rid for rid in live if cancelled(index[rid])]
                    if gone:
                        engine.abort_request(gone)
                        for rid in gone:
                            live.discard(rid)
                            yield Delta(index[rid], "", None, "cancelled")
                for out in engine.step():
                    if out.request_id not in live:
                        continue
                    i = index[out.request_id]
                    c = out.outputs[0]
                    full = c.text   # without the template's answer_prefix, as StopTextStream does
                    lead = self.answer_lead(plist[i])
                    full = full[len(lead):] if lead and full.startswith(lead) else full
                    text, toks = full[sent_chars[i]:], list(c.token_ids[sent_tokens[i]:])
                    sent_chars[i], sent_tokens[i] = len(full), len(c.token_ids)
                    finish = None
                    if out.finished:
                        finish = "length" if c.finish_reason == "length" else "stop"
                        live.discard(out.request_id)
                        if finish == "stop" and toks and toks[-1] in stop_ids[i]:
                            toks = toks[:-1]    # the stop token itself is not part of the answer
                    for t in toks[:-1]:         # one Delta per token, the text on the last
                        yield Delta(i, "", t, None)
                    yield Delta(i, text, toks[-1] if toks else None, finish)
        finally:
            if live:
                engine.abort_request(list(live))
