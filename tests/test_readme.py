"""Every command in README.md runs, in order, as a user would run it.

The README's fenced ```bash blocks are extracted in order. Each CPU block runs as one bash script
(`set -euo pipefail`) in a scratch directory where `recipes/` and `examples/` are links to the repository's
folders, with this Python's bin directory (the venv) first on PATH and HF_HUB_OFFLINE=1; blocks share the
directory, so later sections use earlier sections' `data/` and `runs/`. A failing command fails the test with
the block and its output.

Nothing is skipped silently:
- the opening block (`make demo`, `make test`) is excluded by name: the quickstart has its own test, and
  `make test` is this suite;
- ```bash gpu blocks (accelerate launch with FSDP/DeepSpeed, vLLM, QLoRA) cannot run on a CPU, so each of their
  commands is checked in a form that can: the accelerate config loads with accelerate's own loader, the chatsmith
  command line parses with chatsmith's own parser, the training recipe plus its flags validates, and the vLLM
  backend refuses cleanly (exit 2, one line) where vLLM is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
OPENING = ["make demo", "make test"]
# what the scratch directory links to, so the README's relative paths resolve as in a checkout
LINKED = ("recipes", "examples")
FENCE = re.compile(r"^```(bash[^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def readme_blocks() -> list[tuple[str, str, str]]:
    """(section heading, info string, body) of every ```bash block, in order."""
    out, section = [], ""
    text = README.read_text(encoding="utf-8")
    pos = 0
    for m in FENCE.finditer(text):
        for h in re.findall(r"^## (.+)$", text[pos:m.start()], re.M):
            section = h.strip()
        pos = m.end()
        out.append((section, m.group(1).strip(), m.group(2)))
    return out


def commands(body: str) -> list[str]:
    """The block's commands: backslash continuations joined, comments and blank lines dropped."""
    out = []
    for cmd in body.replace("\\\n", " ").splitlines():
        cmd = cmd.strip()
        if cmd and not cmd.startswith("#"):
            out.append(cmd)
    return out


def classify() -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(opening commands, CPU blocks as (section, body), GPU commands); anything else is a README defect."""
    blocks = readme_blocks()
    assert blocks, "README.md has no ```bash blocks"
    opening, cpu, gpu = [], [], []
    for i, (section, info, body) in enumerate(blocks):
        if i == 0:
            opening = commands(body)
        elif info == "bash":
            cpu.append((section, body))
        elif info == "bash gpu":
            gpu.extend(commands(body))
        else:
            raise AssertionError(f"README block {i} has an unknown info string {info!r} (use bash or bash gpu)")
    return opening, cpu, gpu


def sections() -> list[str]:
    """The README sections with CPU blocks, in order (one test each, sharing one working directory)."""
    return list(dict.fromkeys(section.split(":")[0] for section, _ in classify()[1]))


def test_readme_blocks_are_all_accounted_for():
    opening, cpu, gpu = classify()
    # excluded by name: `make demo` runs the quickstart (tests/test_quickstart.py runs it with --fast) and
    # `make test` runs this suite; nothing else may hide in the opening block
    assert opening == OPENING
    text = README.read_text(encoding="utf-8")
    assert text.split("```bash", 1)[0].strip() == "# chatsmith", "the two commands must come first"
    n_cpu = sum(len(commands(b)) for _, b in cpu)
    assert n_cpu >= 30 and len(gpu) >= 5, (n_cpu, len(gpu))
    # every seed workflow and the scale-out section are there, with the verbs the issue names
    for needle in ("## airoboros", "## StableLM", "## DreamerGPT", "## Scaling out", "--no-history", "PLAINFORMAT",
                   "--parse-reply", "--resume auto", "chatsmith merge", "--load-in-8bit", "chatsmith generate",
                   "chatsmith eval report", "--backend vllm", "fsdp.yaml", "deepspeed", "export gguf"):
        assert needle in text, needle


# ---- GPU blocks, checked on the CPU ------------------------------------------------------------------------
def _parse_chatsmith(argv: list[str]):
    """Parse argv with chatsmith's own parser (verb options included); a bad flag fails here."""
    from chatsmith import cli

    parser = cli.build_parser()
    target = cli._selected_parser(parser, argv)
    assert target is not None, f"not a chatsmith verb: {argv}"
    import importlib

    mod, fn = target._chatsmith_target
    getattr(importlib.import_module(mod), f"configure_{fn}")(target)
    try:
        return parser.parse_args(argv)
    except SystemExit as e:  # argparse's way of saying "bad command line"
        raise AssertionError(f"chatsmith {' '.join(argv)}: does not parse (exit {e.code})") from None


def _check_train(argv: list[str]) -> None:
    from chatsmith.train.config import load_config
    from chatsmith.train.run import overrides_from_args

    args = _parse_chatsmith(argv)
    assert args.config and (ROOT / args.config).is_file(), args.config
    cfg = load_config(ROOT / args.config, overrides_from_args(args))  # ConfigError on a bad recipe or flag
    if cfg.method == "qlora":
        assert cfg.lora.r >= 1


def test_readme_gpu_commands_check_on_cpu():
    from accelerate.commands.config.config_args import load_config_from_file

    _, _, gpu = classify()
    launched = 0
    for cmd in gpu:
        argv = shlex.split(cmd)
        if argv[:2] == ["accelerate", "launch"]:
            i = argv.index("--config_file")
            cfg_file = ROOT / argv[i + 1]
            acc = load_config_from_file(str(cfg_file))
            assert str(acc.distributed_type).split(".")[-1] in ("MULTI_GPU", "FSDP", "DEEPSPEED"), (cmd, acc)
            assert acc.num_processes > 1 and not acc.use_cpu, cmd
            m = argv.index("-m")
            assert argv[m + 1] == "chatsmith", cmd
            rest = argv[m + 2:]
            assert rest[0] == "train", cmd
            _check_train(rest)
            launched += 1
        elif argv[0] == "chatsmith":
            args = _parse_chatsmith(argv[1:])
            if getattr(args, "backend", None) == "vllm":
                assert args.model
        else:
            raise AssertionError(f"README gpu block: no CPU check for {cmd!r}")
    assert launched >= 3
    # the launcher the README names exists and takes those options
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["accelerate", "launch", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "--config_file" in r.stdout, r.stderr[-2000:]


def test_readme_vllm_backend_refuses_cleanly_without_vllm():
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here: the gpu blocks can run as they are")
    except ImportError:
        pass
    r = subprocess.run([str(BIN / "chatsmith"), "serve", "--backend", "vllm", "--model", "smollm2", "--port", "8999"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.startswith("chatsmith: ") and "vllm" in r.stderr.lower() and "Traceback" not in r.stderr


# ---- CPU blocks, run for real -------------------------------------------------------------------------------
def _run_block(body: str, cwd: Path, env: dict, timeout: float) -> tuple[int, str, float]:
    script = "set -euo pipefail\n" + body
    t0 = time.perf_counter()
    # own process group: a background server the block starts is stopped even when the block fails
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return 124, out, time.perf_counter() - t0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return proc.returncode, out, time.perf_counter() - t0


PORTS = (8947, 8948)  # the README's loopback servers


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, smollm2_path) -> Path:
    """One scratch directory for all sections: later sections use earlier sections' data/ and runs/."""
    import socket

    for port in PORTS:  # a stale server here would answer the README's health checks in place of its own
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is in use; the README's servers need it"
    d = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        (d / name).symlink_to(ROOT / name, target_is_directory=True)
    return d


FAILED: list[str] = []


@pytest.mark.slow
@pytest.mark.parametrize("section", sections())
def test_readme_cpu_blocks_run(section, workdir):
    assert not FAILED, f"an earlier README section failed ({FAILED[0]}); this one builds on it"
    assert (BIN / "chatsmith").exists(), f"no chatsmith in {BIN}: install the package (make setup)"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CHATSMITH_DEBUG", None)
    timings = []
    blocks = [(i, body) for i, (sec, body) in enumerate(classify()[1], 1) if sec.split(":")[0] == section]
    assert blocks
    for i, body in blocks:
        rc, out, dt = _run_block(body, workdir, env, timeout=900)
        timings.append(f"block {i}: {dt:.1f} s  {commands(body)[0][:70]}")
        if rc != 0:
            FAILED.append(section)
            raise AssertionError(f"README bash block {i} ({section}) failed (exit {rc}) after {dt:.0f} s:\n{body}\n"
                                 f"--- output (last 4000 chars) ---\n{out[-4000:]}")
    print("\n".join(timings))
    CHECKS[section](workdir)


def _airoboros(d: Path) -> None:
    assert (d / "data/airoboros/train.jsonl").is_file() and (d / "runs/airoboros-smollm2/model.safetensors").is_file()
    assert json.loads((d / "runs/airoboros-smollm2/chatsmith.json").read_text())["template"]["name"] == "airoboros"
    assert (d / "reply.txt").read_text(encoding="utf-8").strip(), "the closed-context chat printed no answer"
    assert "\n\n" in (d / "blueberries.txt").read_text(encoding="utf-8"), "the document should have two paragraphs"


def _stablelm(d: Path) -> None:
    report = json.loads((d / "data/stablelm-sft/report.json").read_text())
    assert len(report["sources"]) == 5, report["sources"]
    formats = {s["name"]: (s["format"], s["dropped"]) for s in report["sources"]}
    assert formats["full-hh-rlhf.jsonl"] == ("hh_prompt", {})                 # the Dahoas rows, detected
    assert formats["sharegpt.json"] == ("sharegpt", {"wrong_language": 2})    # --language en
    assert (d / "runs/stablelm-smollm2/model.safetensors").is_file()
    answers = (d / "stablelm-chat.txt").read_text(encoding="utf-8").splitlines()
    assert len(answers) == 2 and all(a.strip() for a in answers), answers
    assert not [a for a in answers if any(m in a for m in ("<|USER|>", "<|ASSISTANT|>", "<|endoftext|>", "<|im_end|>"))]
    [row] = [json.loads(line) for line in (d / "stablelm-answers.jsonl").read_text().splitlines()]
    assert row["finish_reason"] == "stop", row


def _dreamer(d: Path) -> None:
    assert {p.name for p in (d / "runs/dreamer-smollm2/stages").iterdir()} >= {"f1", "f2", "f3"}
    assert (d / "runs/dreamer-merged/config.json").is_file() and (d / "runs/eval/report/report.md").is_file()
    for name in ("judge_a", "judge_b"):  # two judges, each kept
        judged = [json.loads(line) for line in (d / f"runs/eval/judgments-multi.{name}.jsonl").read_text().splitlines()]
        assert judged and not [j for j in judged if j["status"] == "error"], f"judge {name}: calls failed"
    human = json.loads((d / "runs/eval/human.json").read_text())
    assert len(human["raters"]) == 2 and set(human["scores"]) == {"base", "dreamer"}
    report = (d / "runs/eval/report/report.md").read_text(encoding="utf-8")
    assert "## Judges side by side (multi)" in report and "## Human ratings" in report
    rows = [json.loads(line) for line in (d / "runs/generated.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p1", "p2", "p3"]


def _scaling(d: Path) -> None:
    assert (d / "runs/dreamer-merged.q8_0.gguf").stat().st_size > 50_000_000


CHECKS = {"airoboros-13b-gpt4": _airoboros, "StableLM-Tuned-Alpha": _stablelm, "DreamerGPT": _dreamer,
          "Scaling out": _scaling}
