"""Built-in templates as Jinja chat_templates: transformers' apply_chat_template reproduces chatsmith's rendering
byte for byte, and the `hf` template over that chat_template gives the same ids and labels."""

from __future__ import annotations

import copy

import pytest
import tiny
from test_templates import load_tokenizer

from chatsmith.conversation import Conversation, Message
from chatsmith.templates import TEMPLATES, get_template
from chatsmith.templates.jinja import install_chat_template, to_jinja
from chatsmith.templates.registry import InstructionTemplate


def messages_for(template, conv: Conversation) -> list[dict]:
    """The apply_chat_template messages for `conv`, as a tool that only reads the tokenizer passes them: the system
    prompt as a first system message, and an alpaca row's input as the first user message's "input" key (for
    instruction templates)."""
    msgs: list[dict] = []
    if conv.system is not None:
        msgs.append({"role": "system", "content": conv.system})
    split = InstructionTemplate.split_input(conv) if isinstance(template, InstructionTemplate) else None
    for i, m in enumerate(conv.messages):
        if i == 0 and split is not None:
            msgs.append({"role": "user", "content": split[0], "input": split[1]})
        else:
            msgs.append(m.to_dict())
    return msgs


NAMES = list(TEMPLATES)

CONVERSATIONS = {
    "two-turns": Conversation([Message("user", 'Hi {content} "q" \\n {{ x }} {% raw %}'),
                               Message("assistant", "Hello!"), Message("user", "Again? 中文 😀"),
                               Message("assistant", "Yes.")]),
    "default-system": Conversation([Message("user", "Hi")]),
    "no-system": Conversation([Message("user", "Hi")], system=""),
    "own-system": Conversation([Message("user", "Hi"), Message("assistant", "Yo")], system="Be brief.\nReally."),
    "alpaca-with-input": Conversation.from_dict({"instruction": "Add.", "input": "2 3", "output": "5"}),
    "alpaca-no-input": Conversation.from_dict({"instruction": "Add.", "input": "", "output": "5"}),
    "alpaca-prompt": Conversation.from_dict({"instruction": "翻译", "input": "hello"}),
}


def _with_template(tok, template, **kw):
    tok = copy.copy(tok)
    tok.chat_template = to_jinja(template, **kw)
    return tok


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    tiny.build_tokenizer(path)
    return load_tokenizer(path)


@pytest.mark.parametrize("conv_name", list(CONVERSATIONS))
@pytest.mark.parametrize("name", NAMES)
def test_apply_chat_template_reproduces_the_rendering(name, conv_name, tiny_tok, smol):
    template = get_template(name)
    conv = CONVERSATIONS[conv_name]
    for tok in (tiny_tok, smol):  # different bos/eos strings: {bos}/{eos} follow the tokenizer
        tok = _with_template(tok, template)
        for gen in (False, True):
            if gen and conv.messages[-1].role != "user":
                continue
            ours = template.render(conv, tok, add_generation_prompt=gen).text
            theirs = tok.apply_chat_template(messages_for(template, conv), tokenize=False,
                                             add_generation_prompt=gen)
            assert theirs == ours


def test_without_tokenizer_the_defaults_fill_bos_and_eos():
    from jinja2 import Environment

    text = Environment().from_string(to_jinja(get_template("llama2"))).render(
        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        add_generation_prompt=False)
    assert text == "<s>[INST] Hi [/INST] Yo </s>"


@pytest.mark.parametrize("name", NAMES)
def test_hf_template_over_the_generated_chat_template_matches_ids_and_labels(name, smol, tiny_tok):
    template = get_template(name)
    conv = CONVERSATIONS["own-system"]
    for tok in (smol, tiny_tok):
        tok = _with_template(tok, template)
        a = template.render(conv, tok)
        b = get_template("hf", tok).render(conv, tok)
        assert (b.text, b.input_ids, b.labels) == (a.text, a.input_ids, a.labels)


def test_alpaca_input_is_a_message_key():
    conv = CONVERSATIONS["alpaca-with-input"]
    assert messages_for(get_template("alpaca"), conv) == [
        {"role": "user", "content": "Add.", "input": "2 3"}, {"role": "assistant", "content": "5"}]
    # other templates see the plain user turn
    assert messages_for(get_template("chatml"), conv)[0] == {"role": "user", "content": "Add.\n\n2 3"}


def test_wrong_roles_raise_in_the_chat_template(tiny_tok):
    tok = _with_template(tiny_tok, get_template("vicuna_v1.1"))
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                tokenize=False)


def test_install_adds_bos_for_llama_style_tokenizers_and_survives_saving(tmp_path, tiny_tok):
    from test_templates import sentencepiece_tokenizer

    template = get_template("vicuna_v1.1")
    sp = sentencepiece_tokenizer("always")
    text = install_chat_template(sp, template)
    assert "bos_token" in text
    conv = Conversation([Message("user", "Hi there"), Message("assistant", "The capital")], system="")
    rendered = template.render(conv, sp)
    assert sp.apply_chat_template(messages_for(template, conv), tokenize=False) == "<s>" + rendered.text
    assert "bos_token" not in install_chat_template(copy.copy(tiny_tok), template)  # no BOS added there

    sp.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.chat_template == text
    assert get_template("hf", again).render(conv, again).text == "<s>" + rendered.text


def test_hf_template_round_trips_its_own_chat_template(smol):
    assert to_jinja(get_template("hf", smol)) == smol.chat_template
