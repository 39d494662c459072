"""The transformers backend: batched (left padding), streaming, greedy or sampled generation with stops.

A plain decode loop over the model's KV cache rather than `model.generate`: it lets every row of a batch stop on
its own (stop ids and stop strings), stream per row, and be cancelled, with less per-token overhead.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from chatsmith.engine.base import Delta, Engine, Prompt, SamplingParams
from chatsmith.engine.stops import StopTextStream
from chatsmith.errors import ContextLengthError


class HFEngine(Engine):
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, template: Any, max_context: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        cfg = model.config
        self.max_context = max_context or getattr(cfg, "max_position_embeddings", None) or 2048
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    @classmethod
    def load(cls, model: str = "smollm2", adapters: list[str] | None = None, template: str | None = None,
             dtype: str = "auto", load_in_8bit: bool = False, system: str | None = None) -> "HFEngine":
        from chatsmith import models
        from chatsmith.engine import pick_template

        ref = models.resolve(model, adapters)
        tok = models.load_tokenizer(ref)
        m = models.load_model(ref, dtype=dtype, load_in_8bit=load_in_8bit)
        tpl = pick_template(template, ref.meta, tok)
        if system is not None:
            tpl = tpl.with_system(system)
        return cls(m, tok, tpl)

    # ------------------------------------------------------------------------------------------
    def stream(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams],
               cancelled: Any = None) -> Iterator[Delta]:
        n = len(prompts)
        if n == 0:
            return
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * n
        ids = [self.prompt_ids(p) for p in prompts]
        for i, (p_ids, p) in enumerate(zip(ids, plist)):
            if not p_ids:
                raise ContextLengthError(f"prompt {i} is empty")
            if len(p_ids) + p.max_new_tokens > self.max_context:
                raise ContextLengthError(
                    f"prompt {i} has {len(p_ids)} tokens; with max_new_tokens={p.max_new_tokens} it exceeds the "
                    f"model's context of {self.max_context} tokens")
        stop_cfg = [self.stops(p) for p in plist]
        texts = [StopTextStream(self.tokenizer, s) for s, _ in stop_cfg]
        stop_ids = [set(i) for _, i in stop_cfg]
        gens = [_generator(p, self.device) for p in plist]

        width = max(len(x) for x in ids)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x):] = torch.tensor(x)
            attn[i, width - len(x):] = 1
        input_ids, attn = input_ids.to(self.device), attn.to(self.device)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        done = [False] * n
        produced = [0] * n
        history = [list(x) for x in ids]   # for repetition penalty
        past = None
        step_input, step_pos = input_ids, position_ids
        max_steps = max(p.max_new_tokens for p in plist)
        with torch.inference_mode():
            for _ in range(max_steps):
                out = self.model(input_ids=step_input, attention_mask=attn, position_ids=step_pos,
                                 past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float()
                next_ids = []
                for i in range(n):
                    if done[i]:
                        next_ids.append(self.pad_id)
                        continue
                    next_ids.append(_pick(logits[i], plist[i], history[i], gens[i]))
                for i, t in enumerate(next_ids):
                    if done[i]:
                        continue
                    if cancelled is not None and cancelled(i):
                        done[i] = True
                        yield Delta(i, "", None, "cancelled")
                        continue
                    if t in stop_ids[i]:
                        done[i] = True
                        yield Delta(i, texts[i].flush(), None, "stop")
                        continue
                    produced[i] += 1
                    history[i].append(t)
                    piece = texts[i].add(t)
                    if texts[i].stopped:
                        done[i] = True
                        yield Delta(i, piece, t, "stop")
                    elif produced[i] >= plist[i].max_new_tokens:
                        done[i] = True
                        yield Delta(i, piece + texts[i].flush(), t, "length")
                    else:
                        yield Delta(i, piece, t, None)
                if all(done):
                    break
                step_input = torch.tensor(next_ids, device=self.device).unsqueeze(1)
                attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype, device=self.device)], dim=1)
                step_pos = step_pos[:, -1:] + 1


def _generator(p: SamplingParams, device) -> torch.Generator | None:
    if p.greedy:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(p.seed if p.seed is not None else torch.seed())
    return g


def _pick(logits: torch.Tensor, p: SamplingParams, history: list[int], gen) -> int:
    if p.repetition_penalty != 1.0 and history:
        idx = torch.tensor(sorted(set(history)), device=logits.device)
        vals = logits[idx]
        logits[idx] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if p.greedy:
        return int(torch.argmax(logits))
    logits = logits / p.temperature
    if p.top_k and p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1])).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = sp.cumsum(-1) - sp < p.top_p
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter(0, si, sp)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))
