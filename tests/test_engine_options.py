"""One engine options group (engine/options.py) for every verb that loads a model: the same options with the same
help text, and the same error, from every verb and from the Python API, for an option the backend cannot honour."""

from __future__ import annotations

import importlib

import pytest

from chatsmith import cli
from chatsmith.engine.options import HELP, EngineOptions, engine_options
from chatsmith.errors import ChatsmithError

# verb -> (argv before the engine options, prefix of its engine options, whether --model/--adapter are its own)
VERBS = {
    "chat": (["chat"], "", True),
    "serve": (["serve"], "", True),
    "generate": (["generate", "--input", "in.jsonl", "--output", "out.jsonl"], "", True),
    "eval answer": (["eval", "answer", "--system", "a=smollm2", "--output", "answers"], "", False),
    "eval judge": (["eval", "judge", "--answers", "answers", "--judge", "smollm2"], "judge", False),
}
SHARED = {"template": "template", "backend": "backend", "dtype": "dtype", "load-in-8bit": "load_in_8bit"}

# unsupported combinations (in the verb-neutral spelling) -> the error every verb gives
UNSUPPORTED = [
    (["--backend", "llamacpp", "--load-in-8bit"], dict(backend="llamacpp", load_in_8bit=True),
     "--load-in-8bit works with the transformers backend only (got --backend llamacpp); for llama.cpp export a "
     "q8_0 GGUF (chatsmith export gguf --type q8_0)"),
    (["--backend", "vllm", "--load-in-8bit"], dict(backend="vllm", load_in_8bit=True),
     "--load-in-8bit works with the transformers backend only (got --backend vllm); for llama.cpp export a "
     "q8_0 GGUF (chatsmith export gguf --type q8_0)"),
    (["--backend", "llamacpp", "--adapter", "lora"], dict(backend="llamacpp", adapters=["lora"]),
     "--adapter does not work with the llamacpp backend: merge the adapter and export a GGUF (chatsmith merge, then "
     "chatsmith export gguf)"),
    (["--backend", "llamacpp", "--dtype", "fp16"], dict(backend="llamacpp", dtype="fp16"),
     "--dtype fp16 does not work with the llamacpp backend: the GGUF file fixes the weights' type (chatsmith export "
     "gguf --type f32, f16 or q8_0)"),
]


def verb_parser(argv: list[str]):
    parser = cli.build_parser()
    sub = cli._selected_parser(parser, argv)
    mod, fn = sub._chatsmith_target
    getattr(importlib.import_module(mod), f"configure_{fn}")(sub)
    return parser, sub


def spelled(verb: str, options: list[str]) -> list[str]:
    """The engine options as `verb` spells them: the judge's carry --judge-, eval answer's adapters ride on
    --system NAME=MODEL+ADAPTER."""
    argv, prefix, own_model = VERBS[verb]
    argv, out = list(argv), []
    it = iter(options)
    for opt in it:
        if opt == "--adapter" and verb == "eval answer":
            argv[argv.index("a=smollm2")] = f"a=smollm2+{next(it)}"
            continue
        out.append(f"--{prefix}-{opt[2:]}" if prefix and opt.startswith("--") else opt)
    return argv + out


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_declares_the_options_with_one_help_text(verb):
    argv, prefix, own_model = VERBS[verb]
    _, sub = verb_parser(argv)
    opt = f"--{prefix}-" if prefix else "--"
    names = dict(SHARED, **({"model": "model", "adapter": "adapter"} if own_model else {}))
    if prefix:
        names["adapter"] = "adapter"          # the judge's local model takes adapters as --judge-adapter
    for flag, key in names.items():
        action = sub._option_string_actions.get(opt + flag)
        assert action is not None, f"{verb}: no {opt + flag}"
        assert action.help == HELP[key], f"{verb} {opt + flag}: its own help text"
    if not own_model:
        assert "--model" not in sub._option_string_actions   # the models come from --system / --judge


def test_the_int8_help_says_what_the_cpu_path_does():
    """models.quantize_int8_cpu: weight-only int8 with one scale per output row, activations not quantized."""
    text = HELP["load_in_8bit"]
    assert "one scale per output row" in text and "not dynamic quantization" in text
    assert "bitsandbytes" in text and "transformers backend" in text


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading any engine fails the test: the checks must refuse before a model is touched."""
    def refuse(*a, **k):
        raise AssertionError("an engine was loaded despite an option its backend cannot honour")

    from chatsmith.engine import llamacpp, transformers_engine, vllm

    monkeypatch.setattr(transformers_engine.HFEngine, "load", classmethod(refuse))
    monkeypatch.setattr(llamacpp.LlamaCppEngine, "load", classmethod(refuse))
    monkeypatch.setattr(vllm.VLLMEngine, "load", classmethod(refuse))


@pytest.mark.parametrize("options,api,message", UNSUPPORTED, ids=[" ".join(u[0]) for u in UNSUPPORTED])
def test_an_option_the_backend_cannot_honour_is_the_same_error_everywhere(options, api, message, no_model_loads,
                                                                           tmp_path, monkeypatch, capsys):
    from chatsmith.engine import load_engine

    monkeypatch.chdir(tmp_path)
    (tmp_path / "answers").mkdir()
    (tmp_path / "in.jsonl").write_text('{"instruction": "hi"}\n', encoding="utf-8")
    with pytest.raises(ChatsmithError) as e:
        load_engine("smollm2", **api)                            # the Python API
    assert str(e.value) == message
    for verb in VERBS:
        argv = spelled(verb, options)
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 2, f"{verb}: exit code {rc}, stderr {err!r}"
        prefix = VERBS[verb][1]
        expected = message
        for opt in ("--load-in-8bit", "--backend", "--adapter", "--dtype") if prefix else ():
            expected = expected.replace(opt, f"--{prefix}-{opt[2:]}")
        assert err.strip() == f"chatsmith: {expected}", verb


def test_the_judge_refuses_local_model_options_when_every_judge_is_an_endpoint(tmp_path, capsys):
    rc = cli.main(["eval", "judge", "--answers", str(tmp_path), "--judge", "http://127.0.0.1:9/v1#m",
                   "--judge-adapter", "lora"])
    assert rc == 2
    assert "are for a local judge model; every --judge here is an endpoint" in capsys.readouterr().err


def test_engine_options_from_args_fill_the_fields():
    parser, _ = verb_parser(["chat"])
    args = parser.parse_args(["chat", "--model", "m", "--adapter", "a", "--adapter", "b", "--template", "vicuna_v1.1",
                              "--dtype", "fp32", "--load-in-8bit"])
    assert engine_options(args) == EngineOptions("m", ("a", "b"), "vicuna_v1.1", "transformers", "fp32", True)
    parser, _ = verb_parser(["eval", "judge"])
    args = parser.parse_args(["eval", "judge", "--answers", "d", "--judge-backend", "llamacpp"])
    assert engine_options(args, prefix="judge", model="j.gguf") == EngineOptions("j.gguf", backend="llamacpp")
