"""`chatsmith quickstart`: the whole loop on the embedded SmolLM2-135M-Instruct, on a CPU, in minutes.

prepare the bundled data -> LoRA fine-tune with the airoboros template -> merge -> evaluate base against
fine-tuned on held-out suites (automatic metrics + a local LLM judge) -> report (Markdown, HTML, PNG) -> GGUF
export -> the commands to chat with, serve and re-evaluate the result. Each stage is timed.

It only calls the same Python APIs the verbs use; nothing here is special to the demo but the settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from chatsmith.errors import ChatsmithError

# The demo's training recipe, read by quickstart and shipped for `chatsmith train` (recipes/ links to it): one copy
# of r, learning rate, steps and batch, so the demo and the recipe cannot drift apart.
DEMO_RECIPE = Path(__file__).parent / "recipes" / "smollm2-lora-demo.yaml"


@dataclass
class Settings:
    """What --fast (the tests' few-minute version) changes; None keeps the recipe's value. Training is bounded by
    steps, not epochs: on 2 CPU cores LoRA on SmolLM2 makes roughly 100-600 trained tokens/s."""

    max_steps: int | None = None
    batch_size: int | None = None
    max_length: int | None = None
    eval_limit: int | None = None        # items per suite category
    judge_limit: int = 6
    max_new_tokens: int = 96
    gguf_type: str = "q8_0"
    # the held-out suites bundled with the sample data (data/samples/heldout_*.jsonl), then bundled eval suites:
    # "generation" (open requests, scored by the automatic proxy `general` beside the judge) and "qa" check that
    # general answers do not get worse while the closed-context skill is learnt
    suites: list[str] = field(default_factory=lambda: ["heldout_contextual", "heldout_code", "contextual",
                                                       "generation", "qa"])


FULL = Settings()
FAST = Settings(max_steps=6, batch_size=2, max_length=384, eval_limit=4, judge_limit=2, max_new_tokens=48,
                gguf_type="f16", suites=["heldout_contextual"])


def demo_config(recipe: dict, s: Settings, model: str, out: Path) -> dict:
    """The recipe's training settings with this run's model and folders, and --fast's overrides. Training reads
    the folder `prepare` made from the recipe's data (its val.jsonl is the validation split: val_set_size 0)."""
    overrides = {k: getattr(s, k) for k in ("max_steps", "batch_size", "max_length") if getattr(s, k) is not None}
    return {**recipe, **overrides, "model": model, "data": str(out / "data"), "output_dir": str(out / "lora"),
            "val_set_size": 0}


class Stages:
    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str):
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.times.append((name, dt))
        print(f"--- {name}: {dt:.1f} s", flush=True)

    def summary(self) -> str:
        total = sum(t for _, t in self.times)
        rows = [f"  {name:<28} {t:7.1f} s" for name, t in self.times]
        return "\n".join(["stage timings:", *rows, f"  {'total':<28} {total:7.1f} s"])


def quickstart(output: str | Path = "runs/quickstart", *, fast: bool = False, model: str = "smollm2",
               force: bool = False, gguf_type: str | None = None) -> dict:
    from chatsmith.data import format_table, heldout_contextual, prepare
    from chatsmith.train.data import data_files
    from chatsmith.yamlfile import read_mapping

    s = FAST if fast else FULL
    gguf_type = gguf_type or s.gguf_type
    out = Path(output).expanduser().resolve()
    if out.exists():
        if not force and any(out.iterdir()):
            raise ChatsmithError(f"{out} exists; pass --force to replace it, or --output another directory")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    st = Stages()
    result: dict = {"output": str(out)}

    with st.stage("1. prepare the bundled data"):
        recipe = read_mapping(DEMO_RECIPE, what="recipe")
        cfg = demo_config(recipe, s, model, out)
        report = prepare([str(p) for p in data_files(recipe["data"])], out / "data", template=cfg["template"],
                         model=model, max_length=cfg["max_length"], val_size=recipe["val_set_size"],
                         over_length="drop", seed=0, dedupe="exact")
        print(format_table(report))
        # contamination check: how much of the held-out suite is in the training rows just prepared
        from chatsmith.data.overlap import overlap, overlap_summary

        ov = overlap([out / "data"], heldout_contextual(), n=8, threshold=0.5)
        (out / "overlap.json").write_text(json.dumps(ov, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        result["overlap"] = {k: v for k, v in ov.items() if k != "items"}
        print(f"held-out overlap ({Path(ov['suite']).name}): {overlap_summary(ov)}")

    with st.stage("2. LoRA fine-tune"):
        from chatsmith.train import train

        lora_dir = train(cfg)
        print(f"adapter, loss curve and metrics in {lora_dir}")

    with st.stage("3. merge"):
        from chatsmith.export.merge import merge_adapters

        merged = merge_adapters(model, [str(lora_dir)], out / "merged", dtype="bf16")
        print(f"standalone model in {merged}")

    with st.stage("4. evaluate base vs fine-tuned"):
        systems = {"base": model, "tuned": str(merged)}
        eval_dir, judge_dir = out / "eval", out / "eval-judge"
        result["automatic"], result["judge"] = evaluate(systems, eval_dir, judge_dir, s, judge_model=model)
        auto = result["automatic"]

    with st.stage("5. report"):
        from chatsmith.eval import write_report

        files = write_report(eval_dir, out / "report", title="chatsmith quickstart: base vs fine-tuned")
        write_report(judge_dir, out / "report" / "judge", title="chatsmith quickstart: local judge")
        result["report"] = {k: str(v) for k, v in files.items()}
        print(Path(files["markdown"]).read_text(encoding="utf-8"))

    with st.stage("6. export GGUF"):
        from chatsmith.export.gguf import export_gguf

        gguf = export_gguf(str(merged), out / f"model-{gguf_type}.gguf", qtype=gguf_type)
        print(f"{gguf} ({gguf.stat().st_size / 1e6:.0f} MB), loadable by llama.cpp")
        result["gguf"] = str(gguf)

    print("\n" + st.summary())
    from chatsmith.eval.report import skill_table

    print("\nper-skill figures on the evaluated suites (% of items; n = items scored):\n"
          + skill_table(auto, list(systems)))
    print(f"contamination check, held-out vs training (per item: {out / 'overlap.json'}): {overlap_summary(ov)}")
    result["timings"] = dict(st.times)
    (out / "quickstart.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"""
Your model is ready. Next:
  chatsmith chat --model {merged}
  chatsmith serve --model {merged}            # OpenAI API on http://127.0.0.1:8000/v1 and a chat page at /
  chatsmith eval answer --system base={model} --system tuned={merged} --suite contextual --output {out / 'eval2'}
""")
    return result


def evaluate(systems: dict[str, str], eval_dir: Path, judge_dir: Path, s: Settings, *, judge_model: str
             ) -> tuple[dict, dict]:
    """Stage 4: every system answers the held-out and bundled suites (automatic metrics, the code suite's answers
    run isolated), then a local judge compares a few answers. -> (automatic scores, judge summary)"""
    from chatsmith.data import heldout_code, heldout_contextual
    from chatsmith.eval import answer_suite, judge, load_suite, score_automatic
    from chatsmith.eval.answer import reuse_answers
    from chatsmith.eval.sandbox import SandboxUnavailable

    heldout = {"heldout_contextual": heldout_contextual(), "heldout_code": heldout_code()}
    # every suite's items in one pass per system: one engine load each, and full batches across suites.
    # 32 rows: the widest decode step whose greedy answers equal batch 1's (the native bf16 step; README
    # "Speed on a CPU"), so the demo's figures do not depend on how its items are batched
    items = [it for name in s.suites for it in load_suite(str(heldout.get(name, name)), limit=s.eval_limit)]
    answer_suite(systems, items, eval_dir, max_new_tokens=s.max_new_tokens, temperature=0.0, batch_size=32)
    # the bundled code suite's answers are run (isolated, see the README's threat model): quickstart opts in
    print("quickstart runs the answers to its own bundled code suite against their tests (code execution "
          "allowed for this suite only)")
    try:
        auto = score_automatic(eval_dir, allow_code_execution=True)
    except SandboxUnavailable as e:
        print(f"chatsmith: {e}; code items are left unscored")
        auto = score_automatic(eval_dir, allow_code_execution=False)
    # the judge reads a few items in its own directory, so its table covers exactly what it judged
    judged_items = load_suite(str(heldout_contextual()))[: s.judge_limit]
    # the same items with the same settings were just answered: copied, not generated again
    reuse_answers(eval_dir, judge_dir, [it.id for it in judged_items], list(systems))
    answer_suite(systems, judged_items, judge_dir, max_new_tokens=s.max_new_tokens, temperature=0.0, batch_size=32)
    # every judgment at once: the in-process judge server batches them into one decode
    judged = judge(judge_dir, judge_model, mode="multi", samples=1, max_tokens=128, concurrency=len(judged_items))
    print(f"local judge ({judge_model}): {judged.get('ok')} parsed, {judged.get('unparsable')} unparsable, "
          f"{judged.get('error')} failed of {judged.get('total')} judgments (all counted in the report)")
    return auto, {k: judged.get(k) for k in ("total", "ok", "unparsable", "error")}


def configure_quickstart(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="runs/quickstart", help="where everything goes (default: runs/quickstart)")
    p.add_argument("--fast", action="store_true", help="a 3-minute version (fewer steps, one suite)")
    p.add_argument("--model", default="smollm2", help="the model to fine-tune (default: the embedded smollm2)")
    p.add_argument("--force", action="store_true", help="replace an existing --output directory")
    p.add_argument("--gguf-type", default=None, choices=["f32", "f16", "q8_0"], help="default: q8_0 (f16 with --fast)")


def run_quickstart(args: argparse.Namespace) -> int:
    quickstart(args.output, fast=args.fast, model=args.model, force=args.force, gguf_type=args.gguf_type)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_quickstart(argparse.Namespace(output="runs/quickstart", fast=True, model="smollm2", force=True,
                                               gguf_type=None)))
