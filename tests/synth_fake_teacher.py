"""A real OpenAI-compatible HTTP endpoint (FastAPI + uvicorn on loopback) for the synth tests.

It answers each synth prompt with a well-formed reply (unique per call, so dedupe keeps them), and injects
faults on demand: `faults` is a queue of modes applied to the next requests, one each:
    timeout (sleeps past the client's timeout), 401, 429, 500, 503, garbage (200 text/plain), badjson (200 JSON
    without choices), refusal, prose (no numbered list), plain_bad (PLAINFORMAT Python that does not parse),
    no_source, ok.
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
        if mode == "timeout":
            await asyncio.sleep(self.timeout_sleep)
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
        if "made-up but realistic" in user or "encyclopedia-style" in user:
            return f"The {_unique(n)} festival drew 300 people on Monday. Organizers were pleased."
        if "specific factual question" in user:
            return f"What is the outside fact {_unique(n)}?"
        if "Write one question" in user:
            return f"How many people came to the {_unique(n)} festival?"
        if "input blocks" in system:
            if "outside fact" in user:
                return "The provided context does not contain that information."
            meta = re.search(r"BEGINCONTEXT\n(.*?)ENDCONTEXT", user, re.S).group(1).strip()
            if mode == "no_source":
                return "300 people came."
            return f"300 people came.\nSource:\n{meta}"
        if "letter of the correct option" in system:
            return "B, two"
        if "code only" in system:
            return "def f(:\n  pass" if mode == "plain_bad" else f"```python\ndef f():\n    return {n}\n```"
        if "step by step" in system:
            return f"Step 1: 2 + 2 = 4\nStep 2: 4 * {n} = {4 * n}\nFinal answer: {4 * n}"
        if user.startswith("Characters:"):
            names = re.findall(r"^ - (?!USER/)([^,\n]+),", user, re.M)
            return f'{names[0]}: "Hello there."\n\n{names[1]}: "Hi!"\n\n*{names[0]} smiles*'
        return f"Here is a helpful answer about {_unique(n)}."


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
