"""`chatsmith chat` through a pipe and through a pseudo-terminal, and its context handling."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time

import pytest

from chatsmith.chat import ChatSession, answer_one, read_piped
from chatsmith.conversation import Conversation, Message
from chatsmith.engine.base import SamplingParams
from chatsmith.engine.transformers_engine import HFEngine

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

GREEDY = SamplingParams(max_new_tokens=6, temperature=0)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}   # 2 shared cores: one thread is much faster than two fighting


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return HFEngine.load(str(tiny_llama), dtype="fp32")     # no stored/tokenizer template: vicuna_v1.1


def _chat_args(model) -> list[str]:
    return ["chat", "--model", str(model), "--temperature", "0", "--max-new-tokens", "6", "--dtype", "fp32"]


@pytest.mark.slow   # a subprocess loading torch: ~20 s on the shared 2 cores
def test_piped_prompts_print_only_answers_with_history_and_reset(cli, tiny_llama, engine):
    r = cli(*_chat_args(tiny_llama), input="hello\n\nWhat is the capital of France?\n!!reset\nbye\n", env=ONE_THREAD,
            timeout=300)
    assert r.returncode == 0, r.stderr
    # the same three turns in-process: turn 2 sees turn 1, turn 3 starts over after !!reset
    session = ChatSession(engine, GREEDY)
    a1 = engine.generate([Conversation.single("hello")], GREEDY)[0].text
    a2 = engine.generate([Conversation([Message("user", "hello"), Message("assistant", a1),
                                        Message("user", "What is the capital of France?")])], GREEDY)[0].text
    a3 = engine.generate([Conversation.single("bye")], GREEDY)[0].text
    assert r.stdout == f"{a1}\n{a2}\n{a3}\n"
    assert "(new conversation)" in r.stderr
    assert session.engine.template.name == "vicuna_v1.1"


@pytest.mark.slow   # a subprocess loading torch: ~20 s on the shared 2 cores
def test_pty_session_multiline_reset_exit(tiny_llama, engine):
    master, slave = os.openpty()
    env = {**os.environ, **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, "-m", "chatsmith", *_chat_args(tiny_llama)], stdin=slave,
                            stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    buf = bytearray()

    def read_until(marker: str, timeout: float = 180) -> str:
        deadline = time.time() + timeout
        while marker.encode() not in buf:
            if time.time() > deadline or proc.poll() is not None:
                raise AssertionError(f"no {marker!r} in {bytes(buf)!r}")
            if select.select([master], [], [], 0.2)[0]:
                try:
                    buf.extend(os.read(master, 4096))
                except OSError:
                    pass
        text = buf.decode("utf-8", "replace").replace("\r\n", "\n")
        del buf[: buf.index(marker.encode()) + len(marker)]
        return text

    try:
        read_until("USER: ")
        os.write(master, b"hello \\\n")           # a trailing backslash continues the prompt
        read_until("...   ")
        os.write(master, b"world\n")
        read_until("ASSISTANT: ")
        shown = read_until("USER: ")
        expected = engine.generate([Conversation.single("hello \nworld")], GREEDY)[0].text
        assert shown.startswith(expected + "\n")      # the streamed answer, then the next prompt
        os.write(master, b"!!reset\n")
        read_until("(new conversation)")
        read_until("USER: ")
        os.write(master, b"!!exit\n")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_piped_multiline_is_one_prompt_up_to_the_end_marker():
    doc = "BEGININPUT\nFirst paragraph.\n\nSecond paragraph.\nENDINPUT\n"
    assert list(read_piped(io.StringIO(doc + "\n"), multiline=True)) == [doc.rstrip("\n")]   # blank line kept
    text = "first line\n\nsecond line\n!!end\n\nanother\n  !!end  \n!!end\nlast\n\nblock\n\n"
    assert list(read_piped(io.StringIO(text), multiline=True)) == ["first line\n\nsecond line", "another",
                                                                   "last\n\nblock"]
    assert list(read_piped(io.StringIO("a\n\nEND\nb\n"), multiline=True, end_marker="END")) == ["a", "b"]
    assert list(read_piped(io.StringIO("a\n\nb\n"), multiline=False)) == ["a", "b"]


@pytest.mark.slow   # a subprocess loading torch: ~20 s on the shared 2 cores
def test_piped_document_with_blank_lines_gets_one_answer(cli, tiny_llama, engine):
    doc = "BEGININPUT\nBlueberries are now green.\n\nThey used to be blue.\nENDINPUT\n"
    r = cli(*_chat_args(tiny_llama), "--multiline", input=doc, env=ONE_THREAD, timeout=300)
    assert r.returncode == 0, r.stderr
    expected = engine.generate([Conversation.single(doc.rstrip("\n"))], GREEDY)[0].text
    assert r.stdout == expected + "\n"
    r = cli(*_chat_args(tiny_llama), "--multiline", "--end-marker", " ", input=doc, env=ONE_THREAD, timeout=300)
    assert r.returncode == 2 and "--end-marker must not be empty" in r.stderr


@pytest.mark.slow   # a subprocess loading torch: ~20 s on the shared 2 cores
def test_pty_multiline_ctrl_d_and_end_marker(tiny_llama, engine):
    """FastChat's multiline mode at a terminal: blank lines stay in the prompt; Ctrl-D on an empty line or a line
    holding only the end marker sends it; Ctrl-D with nothing typed quits."""
    master, slave = os.openpty()
    env = {**os.environ, **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, "-m", "chatsmith", *_chat_args(tiny_llama), "--multiline",
                             "--no-history", "--end-marker", "SEND"], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    buf = bytearray()

    def read_until(marker: str, timeout: float = 180) -> str:
        deadline = time.time() + timeout
        while marker.encode() not in buf:
            if time.time() > deadline or proc.poll() is not None:
                raise AssertionError(f"no {marker!r} in {bytes(buf)!r}")
            if select.select([master], [], [], 0.2)[0]:
                try:
                    buf.extend(os.read(master, 4096))
                except OSError:
                    pass
        text = buf.decode("utf-8", "replace").replace("\r\n", "\n")
        del buf[: buf.index(marker.encode()) + len(marker)]
        return text

    try:
        read_until("USER: ")
        os.write(master, b"first paragraph\n")
        read_until("...   ")
        os.write(master, b"\n")                      # a blank line does not send
        read_until("...   ")
        os.write(master, b"second paragraph\n")
        read_until("...   ")
        os.write(master, b"\x04")                    # Ctrl-D on an empty line sends
        read_until("ASSISTANT: ")
        shown = read_until("USER: ")
        expected = engine.generate([Conversation.single("first paragraph\n\nsecond paragraph")], GREEDY)[0].text
        assert shown.startswith(expected + "\n")
        os.write(master, b"hello\n")
        read_until("...   ")
        os.write(master, b"SEND\n")                  # the end marker sends too, and the chat goes on
        read_until("ASSISTANT: ")
        shown = read_until("USER: ")
        assert shown.startswith(engine.generate([Conversation.single("hello")], GREEDY)[0].text + "\n")
        os.write(master, b"\x04")                    # Ctrl-D with nothing typed quits
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_long_conversation_drops_oldest_turns_and_too_long_prompt_is_refused(engine, capsys):
    session = ChatSession(engine, SamplingParams(max_new_tokens=6, temperature=0))
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 8      # ~100 tokens of a 512 context
    out = io.StringIO()
    for _ in range(5):
        assert answer_one(session, long_prompt, interactive=False, out=out) is not None
    err = capsys.readouterr().err
    assert "dropped the oldest" in err
    assert out.getvalue().count("\n") == 5
    conv, params, _ = session.prepare(long_prompt)
    assert len(engine.prompt_ids(conv)) + params.max_new_tokens <= engine.max_context
    kept = len(session.messages)
    # one prompt bigger than the whole context: a clear message, an empty answer line, and the chat goes on
    huge = "The quick brown fox jumps over the lazy dog. " * 60
    assert answer_one(session, huge, interactive=False, out=out) is None
    assert "too long" in capsys.readouterr().err
    assert out.getvalue().endswith("\n\n") and len(session.messages) == kept
    assert answer_one(session, "hello", interactive=False, out=out) is not None


def test_no_history_answers_each_prompt_alone(engine):
    session = ChatSession(engine, GREEDY, history=False)
    out = io.StringIO()
    a = answer_one(session, "hello", interactive=False, out=out)
    answer_one(session, "bye", interactive=False, out=out)
    b = answer_one(session, "hello", interactive=False, out=out)
    assert a == b == engine.generate([Conversation.single("hello")], GREEDY)[0].text
    assert session.messages == []


def test_system_prompt_reaches_the_template(engine):
    session = ChatSession(engine, GREEDY, system="You are terse.")
    conv, _, _ = session.prepare("hello")
    assert engine.template.render(conv, engine.tokenizer, add_generation_prompt=True).text.startswith(
        "You are terse. USER: hello ASSISTANT:")


@pytest.mark.slow   # a subprocess loading torch: ~20 s on the shared 2 cores
def test_embedded_model_answers_through_a_pipe(cli):
    r = cli("chat", "--temperature", "0", "--max-new-tokens", "24", input="What is the capital of France?\n",
            env=ONE_THREAD, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and r.stdout.endswith("\n") and r.stdout.count("\n") == 1
