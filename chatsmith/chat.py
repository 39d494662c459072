"""`chatsmith chat`: FastChat-style terminal chat over an Engine.

Interactive (stdin is a terminal): type a prompt after `USER:`; the answer streams after `ASSISTANT:`.
  * several lines: end a line with a backslash `\\` to continue on the next line, or start with --multiline
    (FastChat's multiline mode): a prompt is every line, blank ones included, up to Ctrl-D on an empty line or a
    line holding only the end marker (--end-marker, default `!!end`); Ctrl-D with nothing typed quits;
  * `!!reset` starts a new conversation, `!!exit` (or Ctrl-D) quits, Ctrl-C stops the answer being written.
Piped (stdin is not a terminal): every line is one prompt; with --multiline the whole input is one prompt (a
document with blank lines stays whole), or each part up to a line holding only the end marker is; only the
answers go to stdout, one per prompt, each ending with a newline. Notes go to stderr.

A conversation that outgrows the model's context drops its oldest turns (said on stderr); a single prompt too
long for the context is refused with a message and the chat goes on.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import sys
from typing import IO, Iterator

from chatsmith.conversation import Conversation, Message
from chatsmith.engine.base import Answer, Engine, SamplingParams
from chatsmith.engine.options import add_engine_args, engine_from_args
from chatsmith.errors import ChatsmithError, ContextLengthError

RESET, EXIT = "!!reset", "!!exit"
END_MARKER = "!!end"   # --multiline: a line holding only this ends a prompt (as Ctrl-D / end of input does)


def configure_chat(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Multi-line input: end a line with '\\' to continue it, or use --multiline (Ctrl-D on an empty line or "
                f"a line holding only the end marker, {END_MARKER} by default, sends; blank lines stay in the prompt). "
                "Commands: !!reset (new conversation), !!exit. Piped stdin: one prompt per line (with --multiline: "
                "all of it, or each part ending with an end-marker line); only answers are printed.")
    add_engine_args(p)
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 for greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--no-history", action="store_true", help="answer every prompt on its own")
    p.add_argument("--multiline", action="store_true",
                   help="a prompt runs to Ctrl-D / end of input, or to a line holding only the end marker")
    p.add_argument("--end-marker", default=END_MARKER, metavar="TEXT",
                   help=f"with --multiline: a line holding only TEXT ends the prompt (default {END_MARKER})")


class ChatSession:
    """The conversation so far, and fitting it into the model's context."""

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None, history: bool = True):
        self.engine = engine
        self.params = params
        self.system = system
        self.keep_history = history
        self.messages: list[Message] = []

    def reset(self) -> None:
        self.messages = []

    def prepare(self, prompt: str) -> tuple[Conversation, SamplingParams, int]:
        """The conversation to send (oldest turns dropped to fit), its params, and how many turns were dropped.
        Raises ContextLengthError if the prompt alone does not fit."""
        msgs = [*(self.messages if self.keep_history else []), Message("user", prompt)]
        ctx = self.engine.max_context
        reserve = max(1, min(self.params.max_new_tokens, ctx // 4))   # room the answer needs at least
        dropped = 0
        while True:
            conv = Conversation(list(msgs), system=self.system)
            n = len(self.engine.prompt_ids(conv))
            if n + reserve <= ctx:
                break
            if len(msgs) == 1:
                raise ContextLengthError(
                    f"this prompt is too long: {n} tokens, and the model's context is {ctx} tokens with room for "
                    f"{reserve} to answer; shorten it")
            msgs = msgs[2:]
            dropped += 1
        if dropped:
            self.messages = msgs[:-1]
        params = replace(self.params, max_new_tokens=min(self.params.max_new_tokens, ctx - n))
        return conv, params, dropped

    def record(self, prompt: str, answer: str) -> None:
        if self.keep_history:
            self.messages += [Message("user", prompt), Message("assistant", answer)]


def run_chat(args: argparse.Namespace) -> int:
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)
    params.validate()
    engine = engine_from_args(args)
    session = ChatSession(engine, params, system=args.system, history=not args.no_history)
    interactive = sys.stdin.isatty()
    marker = args.end_marker.strip()
    if args.multiline and not marker:
        raise ChatsmithError("--end-marker must not be empty or blank (an empty line belongs to the prompt)")
    prompts = read_interactive(args.multiline, marker) if interactive else read_piped(sys.stdin, args.multiline,
                                                                                      marker)
    try:
        for prompt in prompts:
            command = prompt.strip()
            if command == EXIT:
                break
            if command == RESET:
                session.reset()
                print("(new conversation)", file=sys.stdout if interactive else sys.stderr, flush=True)
                continue
            answer_one(session, prompt, interactive)
    finally:
        engine.close()
    return 0


def answer_one(session: ChatSession, prompt: str, interactive: bool, out: IO[str] | None = None) -> str | None:
    """Stream one answer to `out` (stdout); notes go to stderr. Returns the answer, or None if refused."""
    out = out or sys.stdout
    note = sys.stdout if interactive else sys.stderr
    try:
        conv, params, dropped = session.prepare(prompt)
    except ContextLengthError as e:
        print(f"chatsmith: {e}", file=sys.stderr, flush=True)
        if not interactive:
            print("", file=out, flush=True)     # keep one output line per prompt
        return None
    if dropped:
        print(f"(the conversation outgrew the model's context: dropped the oldest {dropped} turn"
              f"{'s' if dropped > 1 else ''})", file=sys.stderr, flush=True)
    if interactive:
        out.write("ASSISTANT: ")
        out.flush()
    answer = Answer()
    try:
        for d in session.engine.stream([conv], params):
            if answer.add(d).text:
                out.write(d.text)
                out.flush()
    except KeyboardInterrupt:
        if not interactive:
            raise
        print(" [stopped]", file=note, flush=True)
        return None                              # a cut-off answer is not kept in the history
    out.write("\n")
    out.flush()
    session.record(prompt, answer.text)
    return answer.text


def read_piped(stream: IO[str], multiline: bool, end_marker: str = END_MARKER) -> Iterator[str]:
    """One prompt per non-empty line; with multiline, everything up to a line holding only `end_marker` (or the
    end of input) is one prompt, blank lines included (leading and trailing blank lines are trimmed)."""
    block: list[str] = []
    for line in stream:
        line = line.rstrip("\r\n")
        if not multiline:
            if line.strip():
                yield line
            continue
        if line.strip() == end_marker:
            text = _join(block)
            if text:
                yield text
            block = []
        else:
            block.append(line)
    if block:
        text = _join(block)
        if text:
            yield text


def _join(lines: list[str]) -> str:
    """The prompt's lines without blank lines at either end (a pasted document often ends with one)."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return "\n".join(lines)


def read_interactive(multiline: bool, end_marker: str = END_MARKER) -> Iterator[str]:
    """Prompts typed at a terminal: a trailing backslash continues a line; with multiline (FastChat's mode) a
    prompt runs until Ctrl-D on an empty line or a line holding only the end marker, blank lines included."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    hint = (f"Ctrl-D on an empty line or a line with only {end_marker} sends" if multiline
            else "end a line with \\ to continue it")
    print(f"(chat: {hint}; {RESET} starts over, {EXIT} quits)", flush=True)
    while True:
        lines: list[str] = []
        label = "USER: "
        try:
            while True:
                line = input(label)
                if line.strip() in (RESET, EXIT) and not lines:
                    lines = [line.strip()]
                    break
                if multiline:
                    if line.strip() == end_marker:
                        break
                    lines.append(line)
                elif line.endswith("\\"):
                    lines.append(line[:-1])
                else:
                    lines.append(line)
                    break
                label = "...   "
        except KeyboardInterrupt:
            print(flush=True)
            if lines:
                yield "\n".join(lines)
            return
        except EOFError:
            print(flush=True)
            if not multiline:
                if lines:
                    yield "\n".join(lines)
                return
            if not _join(lines):
                return              # Ctrl-D with nothing typed: quit
            # multiline: Ctrl-D sends what was typed, and the chat goes on (a terminal's EOF is not sticky)
        text = _join(lines) if multiline else "\n".join(lines)
        if text.strip():
            yield text
