"""Rendering and tokenizing a conversation take time linear in its size, for every template, `hf` included (it
used to render every prefix: 4,001 messages took 167 s). And `hf` still renders what apply_chat_template does,
with the prefix invariant, on conversations long enough to use its learned turn boundaries."""

from __future__ import annotations

import copy
import gc
import time

import pytest
import tiny

from chatsmith.conversation import Conversation, Message
from chatsmith.templates import TEMPLATES, get_template

# SmolLM2's chat_template (ChatML with a default system prompt on the first turn) and Llama-2-chat's
CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() "
    "+ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny.build_tokenizer(tmp_path_factory.mktemp("tok"))


def with_chat_template(tok, chat_template):
    t = copy.copy(tok)
    t.chat_template = chat_template
    return t


def conversation(n: int, system: str | None = None) -> Conversation:
    return Conversation([Message("user" if i % 2 == 0 else "assistant", f"message {i}: the capital of France")
                         for i in range(n)], system=system)


def render_seconds(template, tok, small, large, rounds: int = 5) -> tuple[float, float]:
    """The best of `rounds` CPU-time measurements of each conversation (process_time: other processes on a busy
    machine do not count), taken in turns, small then large, so that a slow spell of the machine (frequency, a
    neighbour's use of the memory bus) falls on both sides instead of on one."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, conv in enumerate((small, large)):
            gc.collect()
            start = time.process_time()
            template.render(conv, tok, add_generation_prompt=True)
            best[i] = min(best[i], time.process_time() - start)
    return best[0], best[1]


def templates(tok):
    out = [(name, get_template(name), tok) for name in TEMPLATES]
    for label, chat_template in (("hf chatml", CHATML_DEFAULT_SYSTEM), ("hf llama2", LLAMA2)):
        t = with_chat_template(tok, chat_template)
        out.append((label, get_template("hf", t), t))
    return out


def test_ten_times_the_messages_take_about_ten_times_as_long(tok):
    # A ratio of two timings measured here, in turns, rather than a time limit: the machine's speed cancels out.
    # Linear work gives ~10x (less where fixed costs weigh in; CI has seen 16.4x from noise alone, when the three
    # small runs all came before the three large ones); the old prefix-by-prefix `hf` gave ~100x. 25x leaves room
    # for that noise and still fails on any renderer whose quadratic part costs over twice its linear part at 3,001
    # messages.
    small, large = conversation(301), conversation(3001)
    for name, template, t in templates(tok):
        short, long = render_seconds(template, t, small, large)
        assert long <= 25 * max(short, 1e-3), f"{name}: {short:.3f} s for 301 messages, {long:.3f} s for 3001"


@pytest.mark.parametrize("chat_template", [CHATML_DEFAULT_SYSTEM, LLAMA2])
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_hf_long_conversation_matches_apply_chat_template(tok, chat_template, system):
    t = with_chat_template(tok, chat_template)
    template = get_template("hf", t)
    conv = conversation(41, system)
    conv.messages[7].content = "  spaced <|im_end|> </s>  "    # stripped by llama2, never a control token
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [m.to_dict() for m in
                                                                                     conv.messages]
    full = template.render(conv, t, add_generation_prompt=True)
    assert full.text == t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert t.decode(full.input_ids) == full.text
    for k in (1, 2, 9, 10, 24, 39):      # every prefix's prompt ids are a prefix of the whole conversation's
        prefix = Conversation(conv.messages[:k], system=system)
        part = template.render(prefix, t, add_generation_prompt=k % 2 == 1)
        assert full.input_ids[:len(part.input_ids)] == part.input_ids, k
    # each answer (and its end marker) is what the labels train on, and nothing else
    answers = Conversation(conv.messages[:40], system=system)
    r = template.render(answers, t)
    trained = t.decode([i for i, lab in zip(r.input_ids, r.labels) if lab != -100])
    expected = [m.content.strip() if chat_template == LLAMA2 else m.content for m in answers.messages[1::2]]
    for text in expected:
        assert text in trained
    assert "message 0" not in trained and "message 2:" not in trained
