"""`chatsmith VERB [SUBVERB] ...`: one table of verbs.

Each entry maps a verb to "module:function-prefix". The module defines `configure_<name>(parser)` to add its
typed options and `run_<name>(args) -> int | None` to do the work; both are imported only when that verb runs,
so `chatsmith --help` stays fast. ChatsmithError becomes one line on stderr and exit code 2 (a traceback only
with --debug).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from chatsmith.errors import ChatsmithError

# verb -> (module, name, help) ; a dict value holds sub-verbs
VERBS: dict[str, object] = {
    "chat": ("chatsmith.chat", "chat", "chat with a model in the terminal (FastChat-style)"),
    "template": {
        "list": ("chatsmith.templates.cli", "list", "list the prompt templates"),
        "render": ("chatsmith.templates.cli", "render", "render one conversation exactly as the model sees it"),
    },
    "context": ("chatsmith.closed_context", "context",
                "build an airoboros closed-context prompt, or parse sources from a reply"),
    "data": {
        "prepare": ("chatsmith.data.prepare", "prepare", "read, validate, mix and split data sets into train/val"),
        "inspect": ("chatsmith.data.inspect", "inspect",
                    "show rendered samples with trainable tokens and length stats"),
        "overlap": ("chatsmith.data.overlap", "overlap", "contamination check: eval items' n-grams in training"),
    },
    "train": ("chatsmith.train.run", "train", "fine-tune (LoRA, QLoRA or full) from a YAML config or flags"),
    "merge": ("chatsmith.export.merge", "merge", "merge LoRA adapters into a standalone model"),
    "export": {
        "gguf": ("chatsmith.export.gguf", "gguf", "write a GGUF file for llama.cpp"),
    },
    "serve": ("chatsmith.serve.app", "serve", "OpenAI-compatible API server with a web chat page"),
    "generate": ("chatsmith.generate", "generate", "batch inference over a file of prompts, resumable"),
    "eval": {
        "answer": ("chatsmith.eval.answer", "answer", "generate every system's answers on a suite"),
        "judge": ("chatsmith.eval.judge", "judge", "score answers with an LLM judge"),
        "human": ("chatsmith.eval.human", "human", "merge human ratings, agreement and judge correlation"),
        "report": ("chatsmith.eval.report", "report", "Markdown/HTML/PNG report per category and system"),
    },
    "synth": ("chatsmith.synth.run", "synth", "generate airoboros-style instruction data with a teacher model"),
    "quickstart": ("chatsmith.quickstart", "quickstart", "the end-to-end demo on the embedded model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatsmith", description="Make your own chat model.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, entry in VERBS.items():
        if isinstance(entry, dict):
            p = sub.add_parser(verb, help=f"{verb}: " + ", ".join(entry))
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            subsub = p.add_subparsers(dest="subverb", metavar="SUBVERB", required=True)
            for name, (mod, fn, help_) in entry.items():
                sp = subsub.add_parser(name, help=help_, description=help_)
                _attach(sp, mod, fn)
        else:
            mod, fn, help_ = entry
            p = sub.add_parser(verb, help=help_, description=help_)
            _attach(p, mod, fn)
    return parser


def _attach(p: argparse.ArgumentParser, mod: str, fn: str) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(_target=(mod, fn))
    # options are added lazily (see main) so --help on one verb imports only that module
    p._chatsmith_target = (mod, fn)  # type: ignore[attr-defined]


def _selected_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser | None:
    """Find the sub-parser named by argv's verbs, to add its options before parsing."""
    cur = parser
    for tok in argv:
        if tok.startswith("-"):
            continue
        actions = [a for a in cur._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or tok not in actions[0].choices:
            break
        cur = actions[0].choices[tok]
        if hasattr(cur, "_chatsmith_target"):
            return cur
    return None


FULL_BYTES = 64 * 2**20    # a disk with less than this free is taken as the cause of a failed write


def _full_disk(e: BaseException, args: argparse.Namespace | None) -> tuple[str, int] | None:
    """(folder, bytes free) when `e` reads as a failed write on a full disk, else None. Why: torch and
    safetensors report a full disk as "basic_ios::clear: iostream error" or "unexpected pos ..." (no errno), and
    a traceback through the Trainer then hides the cause. Looks at the folders the verb writes to (its
    --output, train's --output-dir), the working folder and the temporary folder."""
    import errno
    import shutil
    import tempfile

    if isinstance(e, OSError) and e.errno not in (errno.ENOSPC, errno.EDQUOT, None):
        return None
    # --output on most verbs; train's flags land as set__<config key>
    folders = [getattr(args, name, None) for name in ("output", "set__output_dir")] + [os.getcwd(),
                                                                                       tempfile.gettempdir()]
    for folder in folders:
        if not isinstance(folder, (str, os.PathLike)):
            continue
        path = os.path.abspath(folder)
        while path and not os.path.exists(path):      # an output folder not made yet: the disk it would be on
            path = os.path.dirname(path)
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            continue
        if free < FULL_BYTES:
            return str(folder), free
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("CHATSMITH_DEBUG"))
    parser = build_parser()
    args = None
    try:
        target_parser = _selected_parser(parser, argv)
        if target_parser is not None:
            mod, fn = target_parser._chatsmith_target  # type: ignore[attr-defined]
            module = importlib.import_module(mod)
            getattr(module, f"configure_{fn}")(target_parser)
        args = parser.parse_args(argv)
        mod, fn = args._target
        module = importlib.import_module(mod)
        rc = getattr(module, f"run_{fn}")(args)
        return int(rc or 0)
    except ChatsmithError as e:
        if debug:
            raise
        print(f"chatsmith: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nchatsmith: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:       # before OSError, its base class: a reader that went away (`| head`) is fine
        return 0
    except (OSError, RuntimeError) as e:
        full = None if debug else _full_disk(e, args)
        if full is None:
            raise
        print(f"chatsmith: no space left on the disk holding {full[0]} ({full[1] / 2**20:.0f} MB free); what was "
              f"being written is incomplete: free space and run again ({type(e).__name__}: {str(e)[:200]})",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
