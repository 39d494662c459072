"""Data parallel on CPU: `torchrun --nproc_per_node 2 -m chatsmith train ...` with gloo; both ranks must end
with the same weights (DDP averages gradients, so any drift is a bug)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_cpu_ranks_agree(tiny_llama, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Count to {i}."},
                                                     {"role": "assistant", "content": " ".join(map(str, range(i)))}]})
                            + "\n" for i in range(1, 17)))
    out = tmp_path / "ddp"
    with socket.socket() as sock:            # torchrun's --master_port 0 does not pick a free port
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        port, "-m", "chatsmith", "train", "--model", str(tiny_llama), "--data", str(data),
                        "--template", "chatml", "--output-dir", str(out), "--max-steps", "3", "--batch-size", "2",
                        "--learning-rate", "5e-3", "--precision", "fp32", "--max-length", "128"],
                       capture_output=True, text=True, timeout=600, env=env, check=False)   # a hang bound
    assert r.returncode == 0, r.stderr[-3000:]
    stage = json.loads((out / "chatsmith.json").read_text())["lineage"]["stages"][0]
    assert stage["world_size"] == 2 and stage["steps"] == 3
    a, b = stage["rank_param_checksums"]
    assert a == b, (a, b)                    # both ranks hold the same trainable weights
    # and they trained: LoRA B starts at zero (A is random from the start, so it proves nothing), and every B moved
    from safetensors.torch import load_file

    weights = load_file(str(out / "adapter_model.safetensors"))
    lora_b = {k: t for k, t in weights.items() if "lora_B" in k}
    assert lora_b and all(t.abs().max() > 0 for t in lora_b.values()), [k for k, t in lora_b.items() if not t.any()]
