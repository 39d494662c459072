"""Fine-tuning on HF Trainer: config, tokenize + pack + collate, LoRA / full / QLoRA, atomic checkpoints and
exact resume, multi-stage runs, lineage and the output directory.

Python API: `train(config) -> Path` where config is a TrainConfig, a dict of its keys, or a YAML path.
"""

from chatsmith.train.config import TrainConfig, load_config, parse_config


def train(config, **kwargs):
    from chatsmith.train.run import train as _train

    return _train(config, **kwargs)


__all__ = ["TrainConfig", "load_config", "parse_config", "train"]
