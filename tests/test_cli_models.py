"""``nalu-count models``: listing, ``--json``, ``--show`` and the empty case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_nalu_count import cli, models
from napari_nalu_count.models import store
from napari_nalu_count.nn import registry


@pytest.fixture
def bundled(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "bundled"
    directory.mkdir()
    monkeypatch.setattr(store, "bundled_model_dir", lambda: directory)
    models.clear_model_cache()
    return directory


def _save(name: str, arch: str, directory: Path | None = None, **card_fields) -> Path:
    config = registry.default_config(arch)
    config["widths"] = [4] * len(config["widths"])
    if arch == "fcrn_a":
        config["unit"] = "nalu"
    torch.manual_seed(0)
    net = registry.build_model(config)
    card = models.make_card(name, registry.task_of(config), config, **card_fields)
    return models.save_model(net, card, name, directory=directory)


def test_no_models_note(bundled, capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "no models found" in out and str(models.user_model_dir()) in out


def test_lists_bundled_then_user_with_summary(bundled, capsys):
    _save("nuclei-count", "fcrn_a", bundled, metrics={"split": "bbbc039 test", "mae": 2.345})
    _save("my-seg", "se_unet", metrics={"split": "holdout", "aji": 0.71, "f1": 0.9})
    _save("plain", "unet_count")
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("nuclei-count", "my-seg", "plain"))]
    assert [r.split()[0] for r in rows] == ["nuclei-count", "my-seg", "plain"]
    count_row, seg_row, plain_row = rows
    assert "count" in count_row and "fcrn_a+nalu" in count_row and "params" in count_row
    assert "mae=2.345 (bbbc039 test)" in count_row and count_row.endswith("bundled")
    assert "segment" in seg_row and "aji=0.71 (holdout)" in seg_row and seg_row.endswith("user")
    assert "no metrics" in plain_row


def test_broken_model_is_listed_with_reason(bundled, capsys):
    _save("good", "fcrn_a")
    (models.user_model_dir() / "bad.json").write_text("{oops")
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "BROKEN" in out and "bad.json is not valid JSON" in out
    assert "1 broken model" in out
    good_row = next(line for line in out.splitlines() if line.startswith("good"))
    assert len(good_row) < 100  # a long error does not widen the table


def test_json_output(bundled, capsys):
    _save("jm", "fcrn_a", metrics={"split": "val", "mae": 1.0})
    assert cli.main(["models", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == ["jm"]
    assert entries[0]["ok"] and entries[0]["source"] == "user"
    assert entries[0]["card"]["metrics"] == {"split": "val", "mae": 1.0}


def test_show_prints_full_card(bundled, capsys):
    path = _save("shown", "se_unet", diameter=15.0)
    assert cli.main(["models", "--show", "shown"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out
    card = json.loads(out.split("\n", 1)[1])
    assert card == json.loads(path.read_text())
    assert cli.main(["models", "--show", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["diameter"] == 15.0


def test_show_errors_exit_2(bundled, capsys):
    path = _save("corrupt", "fcrn_a")
    weights = path.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    assert cli.main(["models", "--show", "corrupt"]) == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and str(weights) in err
    assert cli.main(["models", "--show", "missing"]) == 2
    assert "unknown model 'missing'" in capsys.readouterr().err
