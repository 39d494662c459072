"""Training config: YAML + flags, unknown keys and bad values as clear errors, the seeds' recipes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from chatsmith.cli import main
from chatsmith.train.config import ConfigError, load_config, parse_config

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_unknown_keys_are_errors_with_a_hint(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: smollm2\nlerning_rate: 1e-4\nlora:\n  rank: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "unknown key 'lerning_rate' (did you mean 'learning_rate'?)" in msg
    assert "unknown key 'lora.rank'" in msg
    with pytest.raises(ConfigError, match=r"stages\.0\.learnin_rate.*did you mean 'learning_rate'"):
        parse_config({"stages": [{"name": "f1", "learnin_rate": 1}]})


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="learning_rate"):
        parse_config({"learning_rate": -1})
    with pytest.raises(ConfigError, match="method"):
        parse_config({"method": "dpo"})
    with pytest.raises(ConfigError, match="duplicate stage names"):
        parse_config({"data": "x", "stages": [{"name": "a"}, {"name": "a"}]})


def test_flags_override_yaml_and_stages_inherit(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: d.jsonl\nlearning_rate: 1.0e-4\nlora: {r: 4}\nstages:\n  - {name: f1}\n"
                 "  - {name: f2, data: e.jsonl, epochs: 2, start: merged}\n")
    cfg = load_config(p, {"learning_rate": "3e-4", "lora.r": "32", "packing": "false",
                          "lora.target_modules": "q_proj,v_proj"})
    assert cfg.learning_rate == 3e-4 and cfg.lora.r == 32 and cfg.packing is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    (n1, _s1, c1), (n2, s2, c2) = cfg.stage_configs()
    assert (n1, c1.data, c1.epochs, c1.learning_rate) == ("f1", "d.jsonl", 1.0, 3e-4)
    assert (n2, s2, c2.data, c2.epochs, c2.learning_rate) == ("f2", "merged", "e.jsonl", 2.0, 3e-4)


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("data: d.jsonl\nbatchsize: 4\n")
    assert main(["train", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chatsmith: ") and "unknown key 'batchsize' (did you mean 'batch_size'?)" in err
    assert main(["train", "--data", str(tmp_path / "missing.jsonl"), "--template", "chatml",
                 "--model", "smollm2", "--dry-run"]) == 2
    assert "missing.jsonl: no such data file" in capsys.readouterr().err


def test_recipes_validate():
    st = load_config(RECIPES / "stablelm-tuned-alpha-7b.yaml")
    assert (st.global_batch_size, st.learning_rate, st.warmup_steps, st.weight_decay) == (128, 2e-5, 100, 0.01)
    assert (st.adam_beta1, st.adam_beta2, st.precision, st.optimizer, st.method) == (0.9, 0.99, "fp16", "adamw_torch",
                                                                                     "full")
    assert st.template == "stablelm" and st.data == "data/stablelm-sft"   # the folder `data prepare` writes
    st3 = load_config(RECIPES / "stablelm-tuned-alpha-3b.yaml")              # the card's 3B row
    assert (st3.global_batch_size, st3.learning_rate, st3.warmup_steps, st3.model) == (
        256, 2e-5, 50, "stabilityai/stablelm-base-alpha-3b")
    ab = load_config(RECIPES / "airoboros-13b-gpt4.yaml")                    # the older card: 4096, own prompt
    assert ab.method == "full" and ab.template == "airoboros_v1" and ab.max_length == 4096
    ab14 = load_config(RECIPES / "airoboros-13b-gpt4-1.4.yaml")
    assert ab14.method == "full" and ab14.template == "airoboros" and ab14.max_length == 2048
    dr = load_config(RECIPES / "dreamer-13b-lora-hotstart.yaml")
    assert [s[0] for s in dr.stage_configs()] == ["f1", "f2", "f3"]
    assert all(start == "adapter" for _, start, _ in dr.stage_configs()) and dr.method == "lora"
    assert dr.template == "dreamer_zh" and dr.train_on_inputs is False
    demo = load_config(RECIPES / "smollm2-lora-demo.yaml")
    assert demo.model == "smollm2" and demo.method == "lora"


def test_quickstart_trains_the_demo_recipe(tmp_path):
    """make demo trains what recipes/smollm2-lora-demo.yaml says (one file: quickstart reads it), --fast changes
    only steps, batch and length, and the demo reads its prepared folder instead of splitting again."""
    from chatsmith import quickstart as qs
    from chatsmith.yamlfile import read_mapping

    assert (RECIPES / "smollm2-lora-demo.yaml").resolve() == qs.DEMO_RECIPE.resolve()
    recipe = read_mapping(qs.DEMO_RECIPE)
    recipe_cfg = load_config(qs.DEMO_RECIPE).model_dump()
    moved = {"data", "output_dir", "val_set_size"}
    full = load_config(overrides=qs.demo_config(recipe, qs.FULL, "smollm2", tmp_path)).model_dump()
    assert {k: v for k, v in full.items() if k not in moved} == {k: v for k, v in recipe_cfg.items() if k not in moved}
    assert (full["data"], full["val_set_size"]) == (str(tmp_path / "data"), 0)
    fast = load_config(overrides=qs.demo_config(recipe, qs.FAST, "smollm2", tmp_path)).model_dump()
    changed = {k for k in fast if fast[k] != full[k]}
    assert changed == {"max_steps", "max_length"}   # FAST's batch_size equals the recipe's


def test_demo_recipe_dry_run_checks_data_and_model(smollm2_path, capsys):
    assert main(["train", str(RECIPES / "smollm2-lora-demo.yaml"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "training rows" in err and "not training (--dry-run)" in err


def test_accelerate_example_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {p.name: str(load_config_from_file(str(p)).distributed_type).split(".")[-1]
             for p in (RECIPES.parent / "examples" / "accelerate").glob("*.yaml")}
    assert kinds == {"cpu-ddp.yaml": "MULTI_CPU", "ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
                     "deepspeed-zero2.yaml": "DEEPSPEED", "deepspeed-zero3.yaml": "DEEPSPEED"}


def test_dreamer_recipes_carry_the_seed_scripts_settings():
    dr = {name: cfg for name, _, cfg in load_config(RECIPES / "dreamer-13b-lora-hotstart.yaml").stage_configs()}
    assert [(c.train_on_inputs, c.val_set_size) for c in dr.values()] == [(False, 2000), (True, 200), (True, 200)]
    f1 = dr["f1"]
    assert (f1.global_batch_size, f1.batch_size, f1.learning_rate, f1.max_length, f1.epochs) == (256, 8, 1e-4, 512, 3)
    assert f1.model == "models/chinese-alpaca-13b-merged" and f1.lora.target_modules == ["q_proj", "v_proj"]
    bl = load_config(RECIPES / "dreamer-bloom-lora.yaml")
    assert (bl.model, bl.template, bl.method, bl.lora.target_modules) == ("bigscience/bloom-7b1", "alpaca", "lora",
                                                                          ["query_key_value"])
    assert (bl.lora.r, bl.lora.alpha, bl.global_batch_size, bl.batch_size, bl.learning_rate, bl.max_length) == \
        (8, 16, 128, 4, 3e-4, 256)
    assert bl.packing is False and bl.train_on_inputs is True and bl.val_set_size == 2000


def test_a_flag_overrides_every_stage_but_not_stage_data():
    cfg = load_config(RECIPES / "dreamer-13b-lora-hotstart.yaml", {"val_set_size": 1, "learning_rate": 5e-3})
    stages = cfg.stage_configs()
    assert [(c.val_set_size, c.learning_rate) for _, _, c in stages] == [(1, 5e-3)] * 3
    assert [c.train_on_inputs for _, _, c in stages] == [False, True, True]        # keys no flag named stay
    assert [c.data for _, _, c in stages] == ["data/dreamer/f1", "data/dreamer/f2", "data/dreamer/f3"]


def test_the_installed_transformers_is_in_the_range_pyproject_allows():
    """The trainer uses transformers 5.2's TrainingArguments (train_sampling_strategy) and reads no private Trainer
    method; pyproject's range says so, and an install outside it fails here rather than mid-training."""
    import tomllib

    import transformers
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((RECIPES.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    [req] = [Requirement(d) for d in deps if Requirement(d).name == "transformers"]
    assert Version(transformers.__version__) in req.specifier, (transformers.__version__, str(req.specifier))
    assert Version("5.1.0") not in req.specifier and Version("6.0.0") not in req.specifier


def test_warmup_ratio_becomes_a_whole_number_of_steps(tmp_path):
    """A float warmup_steps is a ratio to transformers 5 and a step count to 4.x; the trainer hands every version
    an int: ceil(ratio x steps), computed once the step count is known."""
    import torch
    from transformers.trainer_utils import SchedulerType

    from chatsmith.train.trainer import ChatsmithTrainer, training_arguments

    cfg = parse_config({"warmup_ratio": 0.25, "lr_scheduler": "linear", "max_steps": 10, "learning_rate": 1.0})
    args = training_arguments(cfg, tmp_path, torch.float32, has_val=False)
    assert args.warmup_steps == 0 and args.lr_scheduler_type == SchedulerType.LINEAR
    trainer = ChatsmithTrainer(model=torch.nn.Linear(2, 2), args=args, warmup_ratio=cfg.warmup_ratio)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    assert trainer.args.warmup_steps == 3 and isinstance(trainer.args.warmup_steps, int)      # ceil(2.5)
    lrs = []
    for _ in range(5):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 6 / 7])     # 3 warmup steps, then linear decay over 7
    # warmup_steps set: used as it is, the ratio ignored
    cfg = parse_config({"warmup_steps": 2, "warmup_ratio": 0.5, "max_steps": 10})
    trainer = ChatsmithTrainer(model=torch.nn.Linear(2, 2), warmup_ratio=cfg.warmup_ratio,
                               args=training_arguments(cfg, tmp_path, torch.float32, has_val=False))
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    assert trainer.args.warmup_steps == 2


def test_report_to_takes_trackers_as_training_arguments_does(tmp_path):
    assert parse_config({}).report_to == "none"                       # default: nothing leaves the machine
    assert parse_config({"report_to": "tensorboard"}).report_to == ["tensorboard"]
    assert load_config(None, {"report_to": "none"}).report_to == "none"
    with pytest.raises(ConfigError, match="'all' stands alone"):
        load_config(None, {"report_to": "tensorboard,all"})
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match=r"wandb is not installed \(pip install wandb\)"):
            parse_config({"report_to": ["tensorboard", "wandb"]})
    with pytest.raises(ConfigError, match=r"report_to: .*unknown tracker 'tensorbord' \(did you mean 'tensorboard'"):
        parse_config({"report_to": "tensorbord"})
    with pytest.raises(ConfigError, match="report_to"):
        parse_config({"report_to": 3})
    p = tmp_path / "c.yaml"
    p.write_text("report_to: [tensorboard]\n")
    assert load_config(p).report_to == ["tensorboard"]
