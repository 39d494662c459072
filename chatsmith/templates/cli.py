"""`chatsmith template list` and `chatsmith template render`: see exactly what a model is trained on and prompted
with. `render` prints the prompt byte for byte (no newline added), or with --json the ids and labels too."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.errors import ChatsmithError, ConversationError
from chatsmith.templates.registry import TEMPLATES, get_template

JSON_DEFAULT_MODEL = "smollm2"


def configure_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per template (name, description, "
                                                       "default system prompt, stop strings)")


def run_list(args: argparse.Namespace) -> int:
    rows = [(t.name, t.description, t.default_system, list(t.stops()[0])) for t in TEMPLATES.values()]
    rows.append(("hf", "the model tokenizer's own chat_template (needs --model)", None, []))
    if args.json:
        for name, desc, system, stops in rows:
            print(json.dumps({"name": name, "description": desc, "default_system": system, "stop_strings": stops},
                             ensure_ascii=False))
        return 0
    width = max(len(r[0]) for r in rows)
    for name, desc, _, _ in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def configure_render(p: argparse.ArgumentParser) -> None:
    p.epilog = ('FILE holds one conversation: {"system": ..., "messages": [{"role": "user", "content": ...}, ...]} '
                'or an alpaca row {"instruction", "input", "output"}.')
    p.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="the conversation JSON (default: stdin)")
    p.add_argument("--template", "-t", required=True, help="template name (see `chatsmith template list`)")
    p.add_argument("--model", help="tokenize with this model's tokenizer (default: text only, or "
                                   f"{JSON_DEFAULT_MODEL} with --json or --template hf)")
    p.add_argument("--system", help="override the system prompt ('' for none)")
    p.add_argument("--add-generation-prompt", action="store_true",
                   help="end with the assistant prefix (the conversation must end with a user message)")
    p.add_argument("--train-on-inputs", action="store_true", help="labels on every token, not only the answers")
    p.add_argument("--json", action="store_true", help='print {"prompt", "input_ids", "labels"}')


def read_conversation(path: str) -> Conversation:
    where = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ChatsmithError(f"{where}: cannot read: {e}") from None
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConversationError(f"{where}: line {e.lineno}: invalid JSON: {e.msg}") from None
    return Conversation.from_dict(obj, where=where)


def load_tokenizer_quickly(model: str):
    """models.load_tokenizer, minus torch: a tokenizer saved as the generic tokenizers backend loads through
    PreTrainedTokenizerFast, which skips AutoConfig and the torch import (seconds per `render --json`).
    Tokenizers with their own class (LlamaTokenizer, ...) go through AutoTokenizer as usual."""
    from chatsmith import models

    ref = models.resolve(model)
    src = ref.adapters[-1] if ref.adapters and (ref.adapters[-1] / "tokenizer_config.json").is_file() else ref.path
    try:
        cls = json.loads((Path(src) / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError):
        cls = None
    if cls not in ("TokenizersBackend", "PreTrainedTokenizerFast") or not (Path(src) / "tokenizer.json").is_file():
        return models.load_tokenizer(ref)
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(src))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def run_render(args: argparse.Namespace) -> int:
    conv = read_conversation(args.file)
    if args.system is not None:
        conv.system = args.system
    model = args.model or (JSON_DEFAULT_MODEL if args.json or args.template == "hf" else None)
    tokenizer = load_tokenizer_quickly(model) if model else None
    template = get_template(args.template, tokenizer)
    where = "stdin" if args.file == "-" else args.file
    conv.validate(where=where)  # names the file in the message
    rendered = template.render(conv, tokenizer, add_generation_prompt=args.add_generation_prompt,
                               train_on_inputs=args.train_on_inputs)
    if args.json:
        _write(json.dumps(rendered.to_dict(), ensure_ascii=False) + "\n")
    else:
        _write(rendered.text)
    return 0


def _write(text: str) -> None:
    """Exact bytes (UTF-8), whatever the locale: the point of `render` is to show the prompt as it is."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()
