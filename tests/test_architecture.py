"""The import direction the design promises: a stage may import the stages before it, never one after it.

data -> templates -> train -> export -> engine -> chat/serve/generate -> eval -> quickstart; synth feeds data.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "chatsmith"

# lower rank = further upstream; a module may import only modules of rank <= its own
RANKS = {
    "errors": 0, "conversation": 0, "yamlfile": 0, "outputs": 0, "cpu": 0, "__init__": 0,
    "templates": 1, "context": 1, "models": 1, "adapters": 1,
    "data": 2,
    "synth": 3,
    "train": 4,
    "export": 5,
    "engine": 6,
    "chat": 7, "serve": 7, "generate": 7,
    "eval": 8,
    "quickstart": 9,
    "cli": 10, "__main__": 10,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _rank(unit: str) -> int:
    assert unit in RANKS, f"new top-level module chatsmith.{unit}: give it a rank in tests/test_architecture.py"
    return RANKS[unit]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(n, m) for n, m in out if m == "chatsmith" or m.startswith("chatsmith.")]


def test_imports_point_one_way():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        me = _unit(".".join(rel.parts))
        for line, mod in _imports(path):
            if mod == "chatsmith":
                continue
            them = _unit(mod)
            if _rank(them) > _rank(me):
                bad.append(f"{rel}.py:{line} imports {mod} (chatsmith.{them} is downstream of chatsmith.{me})")
    assert not bad, "\n".join(bad)


def test_rank_table_catches_a_reverse_import(tmp_path):
    """The check itself must be able to fail: templates importing train is flagged."""
    f = tmp_path / "x.py"
    f.write_text("from chatsmith.train import run\n")
    (line, mod), = _imports(f)
    assert _rank(_unit(mod)) > _rank("templates")
