"""Smoke tests of the benchmark studies (benchmarks/counting_study.py, segmentation_study.py).

End to end on tiny synthetic stand-ins (``--data synthetic``) with a microscopic budget: the
JSON of raw results and the markdown report (+ plots) are produced with the expected columns,
and a second call resumes (skips the runs already in the JSON). No ../shared data needed.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = [
    "--data", "synthetic", "--budget", "2", "--steps-per-epoch", "2", "--batch", "2",
    "--patch", "32", "--width-factor", "0.125", "--threads", "1", "--device", "cpu", "--quiet",
]  # fmt: skip


def _study(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_budget_parsing():
    sc = _study("_study_common")
    assert sc.parse_budget("300") == {"kind": "steps", "value": 300, "text": "300 steps"}
    assert sc.parse_budget("5min")["kind"] == "minutes"
    assert sc.budget_fields(sc.parse_budget("300"), 250) == {
        "epochs": 2,
        "steps_per_epoch": 150,
        "max_minutes": None,
    }
    # a budget that is not a multiple of the epoch length is split evenly, not rounded up
    f = sc.budget_fields(sc.parse_budget("300"), 250)
    assert (f["epochs"], f["steps_per_epoch"]) == (2, 150)
    f = sc.budget_fields(sc.parse_budget("2000"), 250)
    assert (f["epochs"], f["steps_per_epoch"]) == (8, 250)
    f = sc.budget_fields(sc.parse_budget("1001"), 250)
    assert f["epochs"] == 5 and 1001 <= f["epochs"] * f["steps_per_epoch"] < 1001 + 5
    c = sc.paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.1, 2: 4.0})
    assert c["n"] == 3 and c["diff"] == pytest.approx(-1.0333, abs=1e-3)


def test_counting_study_end_to_end(tmp_path, capsys):
    cs = _study("counting_study")
    js, doc = tmp_path / "c.json", tmp_path / "doc" / "counting.md"
    argv = TINY + [
        "--experiments", "vgg,synthetic", "--variants", "relu,nac", "--draws", "1",
        "--seeds", "0", "--n-train", "2", "--n-test", "2", "--n-tiled", "1",
        "--json", str(js), "--out-doc", str(doc),
    ]  # fmt: skip
    assert cs.main(argv) == 0
    data = json.loads(js.read_text())
    assert data["study"] == "counting"
    assert len(data["runs"]) == 8  # 2 experiments x 2 archs x 2 variants x 1 draw/seed
    run = data["runs"]["vgg/fcrn_a/nac/draw0"]
    assert set(run["results"]) == {"test", "tiled_256", "tiled_full"}
    assert {"mae", "mre", "pred", "true"} <= set(run["results"]["test"])
    assert run["steps"] == 2 and run["config"]["unit"] == "nac"
    assert run["results"]["tiled_full"]["true"][0] == 16 * run["results"]["test"]["true"][0]
    text = doc.read_text()
    for col in ("MAE (mean ± sd)", "relative error %", "RIP % vs ReLU", "seed spread"):
        assert col in text
    assert "2.9 ± 0.2" in text and "2.4 ± 0.4" in text
    assert "| FCRN-A | NAC |" in text and "| U-Net | ReLU |" in text
    assert "synthetic, 10x" in text and "tiles at full size" in text
    assert (doc.parent / "counting_vgg_mae.png").stat().st_size > 1000
    # resume: nothing new to run; report-only regenerates the markdown
    mtime = js.stat().st_mtime_ns
    assert cs.main(argv) == 0
    assert js.stat().st_mtime_ns == mtime
    doc.unlink()
    assert cs.main(["--report-only", "--json", str(js), "--out-doc", str(doc), "--quiet"]) == 0
    assert "RIP % vs ReLU" in doc.read_text() and "## Findings" not in doc.read_text()
    # hand-written findings go on top, and the regenerating command names the notes file
    notes = tmp_path / "notes.md"
    notes.write_text("NAC does not beat ReLU here.\n")
    report = ["--report-only", "--json", str(js), "--out-doc", str(doc), "--quiet"]
    assert cs.main(report + ["--notes", str(notes)]) == 0
    text = doc.read_text()
    assert text.index("## Findings") < text.index("NAC does not beat") < text.index("## VGG")
    assert f"--notes {notes}" in text
    with pytest.raises(SystemExit):  # refused before any run starts
        cs.main(report + ["--notes", str(tmp_path / "missing.md")])
    assert "missing.md: no such file" in capsys.readouterr().err


def test_tiling_keeps_dots_on_cells():
    cs = _study("counting_study")
    from napari_nalu_count.data.synthetic import synthetic_cells

    s = synthetic_cells((32, 40), 5, 6.0, seed=3)
    t = cs.tile_4x4(s, seed=1)
    assert t.image.shape == (128, 160) and len(t.dots) == 80
    ys, xs = t.dots.round().astype(int).T
    orig = s.image[s.dots.round().astype(int).T[0], s.dots.round().astype(int).T[1]]
    assert sorted(t.image[ys, xs].tolist()) == sorted(orig.tolist() * 16)
    small = cs.downscale_4(t)
    assert small.image.shape == (32, 40) and len(small.dots) == 80


def test_test_time_fre_hook_changes_eval_output():
    import torch

    ss = _study("segmentation_study")
    from napari_nalu_count.nn.registry import build_model

    net = build_model(
        {"architecture": "se_unet", "widths": [8, 16], "fre": {"B": 8, "X": 50.0, "seed": 0}}
    ).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        plain = net(x)
        with ss.TestTimeFRE(net, seed=5):
            enhanced = net(x)
        again = net(x)
    assert not torch.allclose(plain, enhanced)
    assert torch.equal(plain, again)  # hook removed


def test_segmentation_study_end_to_end(tmp_path):
    ss = _study("segmentation_study")
    js, doc = tmp_path / "s.json", tmp_path / "segmentation.md"
    argv = TINY + [
        "--seeds", "0", "--fre-trials", "2", "--lambda-trials", "2", "--tune-fraction", "1",
        "--json", str(js), "--out-doc", str(doc),
    ]  # fmt: skip
    assert ss.main(argv) == 0
    data = json.loads(js.read_text())
    assert set(data["runs"]) == {"baseline/seed0", "fre/seed0", "supervision/seed0"}
    assert {"tune_fre", "tune_lambda"} <= set(data["extra"])
    assert len(data["extra"]["tune_fre"]["trials"]) == 2
    fre = data["runs"]["fre/seed0"]
    assert {"standard", "fre_at_test"} == set(fre["results"])
    assert fre["config"]["fre"]["B"] == data["extra"]["tune_fre"]["best_params"]["B"]
    ds = data["runs"]["supervision/seed0"]
    assert ds["config"]["deep_supervision"] is True and 0 < ds["lam"] < 1
    m = data["runs"]["baseline/seed0"]["results"]["standard"]
    assert {"miou", "iou_boundary", "f1_0.5", "f1_0.9", "f1_mean", "count_mae"} <= set(m)
    text = doc.read_text()
    for col in ("mIoU", "IoU interior", "F1@0.5", "F1@0.9", "mean F1", "seed spread"):
        assert col in text
    assert "Table 1" in text and "TPE searches" in text
    assert (tmp_path / "segmentation_f1.png").is_file()
    assert (tmp_path / "segmentation_iou.png").is_file()
