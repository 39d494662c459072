"""A real OpenAI-compatible HTTP endpoint (FastAPI + uvicorn on loopback) for the synth tests.

It answers each synth prompt with a well-formed reply (unique per call, so dedupe keeps them), and injects
faults on demand: `faults` is a queue of modes applied to the next requests, one each:
    timeout (sleeps past the client's timeout), 401, 429, 500, 503, garbage (200 text/plain), badjson (200 JSON
    without choices), refusal, prose (no numbered list), plain_bad (PLAINFORMAT Python that does not parse),
    no_source, cite_all (contextual answers cite every block), unprefixed (a chat line without a character),
    bad_user_turn (the teacher, playing the chat's user, speaks for a character), ok.
`delay` slows every answer (to kill a run mid-way); `hits` counts requests by mode.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import Counter, deque

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse


def _completion(text: str) -> dict:
    return {"id": "cmpl-x", "object": "chat.completion", "created": int(time.time()), "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


_WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "jasper", "kelp",
          "lagoon", "meadow", "nectar", "onyx", "prairie", "quartz", "reef", "sierra", "tundra"]


def _unique(n: int) -> str:
    """Distinct words per n, so MinHash sees different instructions."""
    return f"{_WORDS[n % 20]} {_WORDS[(n // 20) % 20]} {_WORDS[(n // 400) % 20]} item{n}"


class FakeTeacher:
    def __init__(self, timeout_sleep: float = 2.0):
        self.faults: deque[str] = deque()
        self.delay = 0.0
        self.timeout_sleep = timeout_sleep
        self.hits: Counter = Counter()
        self.n = 0
        self.topic_calls = 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)

    def _next(self) -> int:
        self.n += 1
        return self.n

    async def _chat(self, request: Request):
        body = await request.json()
        mode = self.faults.popleft() if self.faults else "ok"
        self.hits[mode] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode == "timeout":   # the client has given up by now: answer without taking a number, so a late
            await asyncio.sleep(self.timeout_sleep)   # reply cannot shift the next test's fixed request order
            return _completion("late")
        if mode in ("401", "429", "500", "503"):
            return JSONResponse({"error": {"message": f"injected {mode}"}}, status_code=int(mode),
                                headers={"retry-after": "0"} if mode == "429" else None)
        if mode == "garbage":
            return PlainTextResponse("<html>oops</html>")
        if mode == "badjson":
            return JSONResponse({"unexpected": True})
        if mode == "refusal":
            return _completion("I'm sorry, but I can't help with that.")
        if mode == "prose":
            return _completion("I like turtles.")
        return _completion(self.answer(body["messages"], mode))

    def answer(self, messages: list[dict], mode: str = "ok") -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = messages[-1]["content"]
        n = self._next()
        if "GOOD or BAD" in user:
            return "BAD" if "cull-me" in user else "GOOD"
        if "diverse topics" in user:
            self.topic_calls += 1
            return "Here you go:\n" + "\n".join(f"{i}. topic {_unique(n * 10 + i)}" for i in range(1, 6))
        if "numbered list" in user:
            size = int(re.search(r"Write (\d+)", user).group(1))
            if "multiple choice" in user:
                return "\n".join(f"{i}. Which {_unique(n * 10 + i)} is right?\nA) one\nB) two\nC) three\nD) four"
                                 for i in range(1, size + 1))
            if "programming tasks" in user:
                return "\n".join(f"{i}. Write a function for {_unique(n * 10 + i)}." for i in range(1, size + 1))
            return "Sure!\n" + "\n".join(f"TSK {i}. Explain {_unique(n * 10 + i)}." for i in range(1, size + 1))
        if "realistic news article" in user or "encyclopedia-style" in user:
            return f"The {_unique(n)} festival drew 300 people on Monday. Organizers were pleased."
        if "Rewrite it with one key fact changed" in user:  # the counterfactual version of the paragraph
            passage = re.search(r"Here is a paragraph:\n(.*?)\n\n", user, re.S).group(1)
            return passage.replace("drew 300 people", "drew 500 people") + " It rained."
        if "specific factual question" in user:
            return f"What is the outside fact {_unique(n)}?"
        if "Write one question" in user or "Write one simple question" in user:
            return f"How many people came to the {re.search(r'The (.+?) festival', user).group(1)} festival?"
        if "input blocks" in system:
            return self._contextual_answer(user, mode)
        if "says or does next" in user:  # the teacher playing Jon in a multi-character chat
            if mode == "bad_user_turn":
                name = re.search(r"^ - (?!USER/)([^,\n]+),", user, re.M).group(1)
                return f'{name}: "I speak for {name}."'
            return f"*waves* Tell me about {_unique(n)}!"
        if "Write the user's next message" in user:  # the teacher playing the user in a role-play
            return f"And what about {_unique(n)}?"
        if "letter of the correct option" in system:
            return "B, two"
        if "code only" in system:
            return "def f(:\n  pass" if mode == "plain_bad" else f"```python\ndef f():\n    return {n}\n```"
        if "step by step" in system:
            return f"Step 1: 2 + 2 = 4\nStep 2: 4 * {n} = {4 * n}\nFinal answer: {4 * n}"
        setup = next((m["content"] for m in messages if m["role"] == "user"), "")
        if setup.startswith("Characters:"):
            names = re.findall(r"^ - (?!USER/)([^,\n]+),", setup, re.M)
            if mode == "unprefixed":
                return "Somebody says something."
            return f'{names[0]}: "Hello there, {_unique(n)}."\n\n{names[1]}: "Hi!"\n\n*{names[0]} smiles*'
        return f"Here is a helpful answer about {_unique(n)}."


    @staticmethod
    def _contextual_answer(user: str, mode: str) -> str:
        """Answer each instruction from the block it is about and cite exactly those blocks, as a good teacher
        does; `no_source` leaves the citations out, `cite_all` cites every block, used or not."""
        blocks = re.findall(r"BEGINCONTEXT\n(.*?)ENDCONTEXT\n(.*?)\nENDINPUT", user, re.S)
        questions = re.search(r"BEGININSTRUCTION\n(.*?)\nENDINSTRUCTION", user, re.S).group(1).splitlines()
        answers, cited = [], []
        for q in questions:
            m = re.search(r"the (.+?) festival", q)
            hit = next((b for b in blocks if m and f"The {m.group(1)} festival" in b[1]), None)
            if hit is None:
                answers.append("The provided context does not contain that information.")
                continue
            count = re.search(r"drew (\d+) people", hit[1]).group(1)
            answers.append(f"{count} people came to the {m.group(1)} festival.")
            if hit not in cited:
                cited.append(hit)
        if mode == "cite_all":
            cited = blocks
        if mode == "no_source" or not cited:
            return "\n".join(answers)
        return "\n".join(answers) + "\nSource:\n" + "\n\n".join(meta.strip() for meta, _ in cited)


class Served:
    """Run an ASGI app with uvicorn in a thread on a free loopback port."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "Served":
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
