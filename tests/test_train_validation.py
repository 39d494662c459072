"""`val_set_size` (a count or a fraction) always applies: it splits the training rows even when the prepared folder
holds a val.jsonl, and the run says which validation rows it uses; set beside an explicit val_data it is an error;
a folder's val.jsonl is used when val_set_size is 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatsmith.errors import ChatsmithError
from chatsmith.train.config import parse_config
from chatsmith.train.run import plan_run

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
        for a in range(6) for b in range(4)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A `data prepare` folder: 24 training rows and a val.jsonl of 3."""
    d = tmp_path_factory.mktemp("prepared")
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    return d


def _plan(model, data, **kw):
    return plan_run(parse_config({"model": str(model), "data": str(data), "template": "vicuna_v1.1",
                                  "max_length": 128, **kw}))


@pytest.mark.parametrize("size, n_val", [(4, 4), (0.25, 6)])
def test_val_set_size_applies_over_a_prepared_val_jsonl_and_says_so(size, n_val, tiny_llama, prepared, capfd):
    st = _plan(tiny_llama, prepared, val_set_size=size).stages[0]
    err = capfd.readouterr().err
    assert len(st.val.examples) == n_val and len(st.train.examples) == 24 - n_val
    assert st.val_files == []                                     # the lineage does not claim val.jsonl
    assert (f"chatsmith: stage main: validation: val_set_size {size:g} splits {prepared / 'train.jsonl'}; "
            f"{prepared / 'val.jsonl'} (3 rows) is not used (val_set_size: 0 uses it instead)") in err
    assert f"{n_val} validation rows (split off by val_set_size {size:g})" in err


def test_without_val_set_size_the_prepared_val_jsonl_is_used(tiny_llama, prepared, capfd):
    st = _plan(tiny_llama, prepared).stages[0]
    err = capfd.readouterr().err
    assert len(st.val.examples) == 3 and len(st.train.examples) == 24 and st.val_files == [prepared / "val.jsonl"]
    assert "24 training rows" in err and "3 validation rows (val.jsonl)" in err and "is not used" not in err


def test_val_set_size_beside_explicit_val_data_is_an_error(tiny_llama, prepared):
    with pytest.raises(ChatsmithError) as e:
        _plan(tiny_llama, prepared / "train.jsonl", val_data=str(prepared / "val.jsonl"), val_set_size=4)
    assert str(e.value) == (f"stage main: both val_data ({prepared / 'val.jsonl'}) and val_set_size (4) set the "
                            "validation rows; keep one")


@pytest.mark.parametrize("size, message", [
    (30, "stage main: val_set_size 30 leaves no training rows (only 24 rows)"),
    (2.5, "val_set_size: Value error, a count of rows is a whole number; a fraction of the rows is below 1"),
])
def test_bad_val_set_size(size, message, tiny_llama, prepared):
    with pytest.raises(ChatsmithError) as e:
        _plan(tiny_llama, prepared, val_set_size=size)
    assert message in str(e.value)


def test_cli_dry_run_says_which_validation_rows(cli, tiny_llama, prepared):
    r = cli("train", "--dry-run", "--model", str(tiny_llama), "--data", str(prepared), "--template", "vicuna_v1.1",
            "--val-set-size", "5")
    assert r.returncode == 0, r.stderr
    assert "val_set_size 5 splits" in r.stderr and "(3 rows) is not used" in r.stderr
    assert "19 training rows" in r.stderr and "5 validation rows (split off by val_set_size 5)" in r.stderr
