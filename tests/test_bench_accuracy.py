"""``nalu-count bench accuracy``: metric helpers with known answers, rescaled copies, baselines,
and the whole command on a tiny fake data root (no ../shared/data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage import io as skio

from napari_nalu_count import cli
from napari_nalu_count.bench import accuracy as bench
from napari_nalu_count.data import synthetic_cells

# ---------------------------------------------------------------------------------------------
# a fake data root with the real layouts


def _paint(labels: np.ndarray) -> np.ndarray:
    """Instance labels -> a BBBC039-style painted mask (touching objects get different values)."""
    painted = np.zeros(labels.shape, dtype=np.uint8)
    for i in range(1, int(labels.max()) + 1):
        obj = labels == i
        if not obj.any():
            continue
        ring = ndi.binary_dilation(obj) & ~obj
        used = set(np.unique(painted[ring]).tolist())
        painted[obj] = min(v for v in range(1, 255) if v not in used)
    return painted


def _cells(seed: int, shape=(96, 96), n=8, diameter=14.0):
    return synthetic_cells(shape, n_cells=n, diameter=diameter, seed=seed, overlap=0.0)


def _fake_root(root: Path) -> Path:
    # BBBC039: uint16 TIFF + RGBA PNG masks (red channel painted 1, 2, 3, ...)
    b = root / "bbbc039"
    (b / "images").mkdir(parents=True)
    (b / "masks").mkdir()
    names = [f"img{i}" for i in range(3)]
    for i, name in enumerate(names):
        s = _cells(i, diameter=16.0)
        tifffile.imwrite(b / "images" / f"{name}.tif", s.image)
        rgba = np.zeros(s.image.shape + (4,), dtype=np.uint8)
        rgba[..., 0] = _paint(s.labels)
        rgba[..., 3] = 255
        skio.imsave(b / "masks" / f"{name}.png", rgba, check_contrast=False)
    (b / "train.txt").write_text("img0\n")
    (b / "val.txt").write_text("img1\nimg2\n")
    # DSB and Aitslab: uint8 PNG + uint16 TIFF labels; DSB nuclei small (10 px: gone at 0.5x)
    for folder, d, seed0 in (("dsb2018_train", 10.0, 10), ("aitslab", 20.0, 20)):
        f = root / folder
        (f / "images").mkdir(parents=True)
        (f / "labels").mkdir()
        for i in range(2):
            s = _cells(seed0 + i, n=6, diameter=d)
            img8 = (255 * (s.image - s.image.min()) / np.ptp(s.image)).astype(np.uint8)
            skio.imsave(f / "images" / f"s{i}.png", img8, check_contrast=False)
            tifffile.imwrite(f / "labels" / f"s{i}.tif", s.labels.astype(np.uint16))
        (f / "val.txt").write_text("s0\ns1\n")
        (f / "train.txt").write_text("")
    # VGG: NNNcell.png (signal in blue) + NNNdots.png (one red pixel per cell), test 101-102
    v = root / "vgg_cells"
    v.mkdir()
    for i in (101, 102):
        s = _cells(i, shape=(64, 64), n=5, diameter=10.0)
        rgb = np.zeros((64, 64, 3), dtype=np.uint8)
        rgb[..., 2] = (255 * (s.image - s.image.min()) / np.ptp(s.image)).astype(np.uint8)
        dots = np.zeros((64, 64, 3), dtype=np.uint8)
        yx = np.clip(np.rint(s.dots).astype(int), 0, 63)
        dots[yx[:, 0], yx[:, 1], 0] = 255
        skio.imsave(v / f"{i:03d}cell.png", rgb, check_contrast=False)
        skio.imsave(v / f"{i:03d}dots.png", dots, check_contrast=False)
    return root


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return _fake_root(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def full_run(fake_root, tmp_path_factory) -> tuple[int, dict, Path]:
    out = tmp_path_factory.mktemp("out")
    rc = cli.main(
        [
            "bench",
            "accuracy",
            "--data",
            str(fake_root),
            "--scales",
            "0.5,2",
            "--limit",
            "2",
            "--threads",
            "1",
            "--quiet",
            "--json",
            str(out / "acc.json"),
            "--report",
            str(out / "report"),
        ]
    )
    data = json.loads((out / "acc.json").read_text()) if rc == 0 else {}
    return rc, data, out


# ---------------------------------------------------------------------------------------------
# metric helpers: known answers


def test_point_counts_perfect_shifted_and_empty() -> None:
    true = np.array([[10.0, 10.0], [10.0, 30.0], [40.0, 40.0]])
    assert bench.point_counts(true.copy(), true, 5.0) == (3, 0, 0)
    assert bench.point_counts(true + [3.0, 0.0], true, 5.0) == (3, 0, 0)  # within the radius
    assert bench.point_counts(true + [6.0, 0.0], true, 5.0) == (0, 3, 3)  # beyond it
    extra = np.vstack([true, [[80.0, 80.0]]])
    assert bench.point_counts(extra, true, 5.0) == (3, 1, 0)
    assert bench.point_counts(np.zeros((0, 2)), true, 5.0) == (0, 0, 3)
    assert bench.point_counts(true, np.zeros((0, 2)), 5.0) == (0, 3, 0)
    # one-to-one: two predictions next to one true point give one TP and one FP
    assert bench.point_counts(np.array([[10.0, 10.0], [11.0, 10.0]]), true[:1], 5.0) == (1, 1, 0)


def test_seg_counts_perfect_and_shifted() -> None:
    lab = np.zeros((40, 40), dtype=np.int32)
    lab[5:15, 5:15] = 1
    lab[20:30, 20:30] = 2
    assert bench.seg_counts(lab, lab) == {"0.5": [2, 0, 0], "0.75": [2, 0, 0]}
    shifted = np.roll(lab, 2, axis=1)  # IoU 80/120 = 0.667: a match at 0.5, not at 0.75
    assert bench.seg_counts(lab, shifted) == {"0.5": [2, 0, 0], "0.75": [0, 2, 2]}


def _row(name: str, true: int, pred: dict[str, float], seg=None) -> dict:
    return {
        "set": "bbbc039",
        "scale": 1.0,
        "name": name,
        "true_count": true,
        "methods": {
            m: {"count": c, "seconds": 0.5, "points": [min(true, int(c)), 0, 0], **(seg or {})}
            for m, c in pred.items()
        },
    }


def test_aggregate_known_mae_bias_rmse_and_f1() -> None:
    rows = [
        _row(
            "a", 100, {"counter": 100, "LoG": 110}, {"seg": {"0.5": [9, 1, 0], "0.75": [5, 5, 4]}}
        ),
        _row("b", 50, {"counter": 50, "LoG": 40}, {"seg": {"0.5": [9, 0, 1], "0.75": [5, 4, 5]}}),
    ]
    res = {r["method"]: r for r in bench.aggregate(rows, ["counter", "LoG"])}
    perfect = res["counter"]
    assert perfect["mae"] == 0 and perfect["rel_mae"] == 0 and perfect["bias"] == 0
    assert perfect["n_images"] == 2 and perfect["mean_true"] == 75
    off = res["LoG"]
    assert off["mae"] == pytest.approx(10.0)
    assert off["rel_mae"] == pytest.approx(10.0 / 75.0)
    assert off["bias"] == pytest.approx(0.0)  # +10 and -10
    assert off["rmse"] == pytest.approx(10.0)
    assert off["seconds_per_image"] == pytest.approx(0.5)
    # micro F1 from summed TP/FP/FN: 18 TP, 1 FP, 1 FN -> 36 / 38
    assert off["seg_f1_50"] == pytest.approx(36 / 38)
    assert off["seg_f1_75"] == pytest.approx(20 / 38)
    # points: "counter" got every true point and nothing else -> F1 1
    assert perfect["point_f1"] == 1.0 and perfect["point_tp"] == 150


def test_errors_on_one_image_are_recorded_not_fatal() -> None:
    s = _cells(3)
    s.meta["diameter"] = 14.0

    def boom(image, d):
        raise RuntimeError("bad image")

    def exact(image, d):
        return {"count": len(s.dots), "points": s.dots, "labels": s.labels}

    row = bench.evaluate_image(s, "bbbc039", 1.0, {"boom": boom, "exact": exact})
    assert row["methods"]["boom"] == {"error": "RuntimeError: bad image"}
    ok = row["methods"]["exact"]
    assert ok["count"] == len(s.dots) and ok["points"] == [len(s.dots), 0, 0]
    n = int(s.labels.max())
    assert ok["seg"]["0.5"] == [n, 0, 0]
    res = bench.aggregate([row], ["boom", "exact"])
    by = {r["method"]: r for r in res}
    assert by["boom"]["n_errors"] == 1 and by["boom"]["n_images"] == 0
    assert by["exact"]["mae"] == 0 and by["exact"]["seg_f1_50"] == 1.0


def test_diameter_modes() -> None:
    s = _cells(4)
    s.meta["diameter"] = 14.5
    seen = {}

    def spy(image, d):
        seen["d"] = d
        return {"count": 0, "points": np.zeros((0, 2))}

    for mode, want in (("none", None), ("true", 14.5), ("auto", "auto")):
        row = bench.evaluate_image(s, "dsb", 1.0, {"m": spy}, diameter_mode=mode)
        assert seen["d"] == want and row["diameter_given"] == want
    s.meta["diameter"] = None  # an image without objects takes the set's median
    bench.evaluate_image(s, "dsb", 1.0, {"m": spy}, diameter_mode="true", set_median=20.0)
    assert seen["d"] == 20.0


# ---------------------------------------------------------------------------------------------
# rescaled copies and baselines


def test_cast_like_rounds_and_clips() -> None:
    x = np.array([-3.0, 0.4, 0.6, 254.6, 300.0], dtype=np.float32)
    y = bench.cast_like(x, np.uint8)
    assert y.dtype == np.uint8 and y.tolist() == [0, 0, 1, 255, 255]
    assert bench.cast_like(np.array([70000.0]), np.uint16).tolist() == [65535]


def test_rescaled_copy_keeps_dtype_maps_dots_and_skips_small() -> None:
    big, small = _cells(5, diameter=16.0), _cells(6, diameter=10.0)
    big.meta["diameter"], small.meta["diameter"] = 16.0, 10.0
    big.name, small.name = "big", "small"
    kept, skipped = bench.rescaled_copy([big, small], 0.5)
    assert [k.name for k in kept] == ["big"]
    assert skipped == [{"name": "small", "diameter": 10.0, "scaled_diameter": 5.0}]
    (c,) = kept
    assert c.image.dtype == np.uint16 and c.image.shape == (48, 48)
    assert c.meta["diameter"] == 8.0 and len(c.dots) == len(big.dots)
    np.testing.assert_allclose(c.dots, (big.dots + 0.5) * 0.5 - 0.5)
    (c2,), _ = bench.rescaled_copy([big], 2.0)
    assert c2.image.dtype == np.uint16 and c2.labels.shape == (192, 192)
    # nearest neighbour at pixel centres: every 2x2 block is one original pixel
    np.testing.assert_array_equal(c2.labels[::2, ::2] > 0, big.labels > 0)
    assert int(c2.labels.max()) == len(np.unique(c2.labels)) - 1  # relabelled 1..n


def _discs(shape=(128, 128), d=16.0, spacing=40):
    yy, xx = np.indices(shape)
    img = np.full(shape, 100.0)
    lab = np.zeros(shape, dtype=np.int32)
    centres = [
        (y, x) for y in range(24, shape[0] - 10, spacing) for x in range(24, shape[1] - 10, spacing)
    ]
    for i, (y, x) in enumerate(centres, 1):
        m = (yy - y) ** 2 + (xx - x) ** 2 <= (d / 2) ** 2
        img[m] = 1000.0
        lab[m] = i
    return img.astype(np.uint16), lab, np.array(centres, dtype=float)


def test_baselines_find_separated_discs() -> None:
    img, lab, centres = _discs()
    pts = bench.log_baseline(img)
    assert len(pts) == len(centres)
    assert bench.point_counts(pts, centres, 8.0) == (len(centres), 0, 0)
    ws = bench.otsu_watershed(img)
    assert int(ws.max()) == len(centres)
    assert bench.seg_counts(lab, ws)["0.75"] == [len(centres), 0, 0]
    flat = np.full((32, 32), 7, dtype=np.uint16)  # a constant image has nothing
    assert len(bench.log_baseline(flat)) == 0 and int(bench.otsu_watershed(flat).max()) == 0


# ---------------------------------------------------------------------------------------------
# the command


def test_run_writes_json_report_and_tables(full_run) -> None:
    rc, data, out = full_run
    assert rc == 0
    assert data["benchmark"] == "accuracy"
    assert data["command"].startswith("nalu-count bench accuracy ")
    for key in ("platform", "torch", "torch_threads", "cpu_count"):
        assert key in data["machine"]
    assert data["machine"]["torch_threads"] == 1
    for task in ("count", "segment"):
        m = data["models"][task]
        assert m["name"] and len(m["card_sha256"]) == 64 and len(m["weights_sha256"]) == 64
    assert set(data["sets"]) == {"bbbc039", "dsb", "aitslab", "vgg"}
    got = {(r["set"], r["scale"], r["method"]) for r in data["results"]}
    for m in bench.METHODS:
        for s in ("bbbc039", "dsb"):
            for scale in (1.0, 2.0):
                assert (s, scale, m) in got
        assert ("aitslab", 1.0, m) in got and ("vgg", 1.0, m) in got
        assert ("aitslab", 2.0, m) not in got  # only BBBC039 and DSB get rescaled copies
    # DSB nuclei are 10 px: every 0.5x copy is under 6 px and skipped, and that is reported
    assert data["sets"]["dsb"]["copies"]["0.5"] == {"n_images": 0, "n_skipped": 2, "of": 2}
    assert {(k["set"], k["scale"]) for k in data["skipped"]} == {("dsb", 0.5)}
    assert ("bbbc039", 0.5, "counter") in got
    for r in data["results"]:
        assert r["n_images"] >= 1 and r["n_errors"] == 0
        assert r["mae"] >= 0 and r["rmse"] >= r["mae"] - 1e-9
        assert r["seconds_per_image"] > 0
        has_masks = r["set"] != "vgg" and r["method"] in bench.SEG_METHODS
        assert (r["seg_f1_50"] is not None) == has_masks
    # per-image rows: 2 bbbc + 2 x 2 copies (0.5, 2) ... limit 2 everywhere
    rows = data["images"]
    assert len([r for r in rows if r["set"] == "bbbc039"]) == 6
    assert len([r for r in rows if r["set"] == "vgg"]) == 2
    vgg = [r for r in rows if r["set"] == "vgg"][0]
    assert vgg["name"] == "101" and vgg["true_count"] == 5 and vgg["true_diameter"] == 10.0
    for r in rows:
        assert set(r["methods"]) == set(bench.METHODS)
        assert "seconds" in r["methods"]["counter"]
    bb = [r for r in rows if r["set"] == "bbbc039" and r["scale"] == 2.0][0]
    assert bb["dtype"] == "uint16" and bb["shape"] == [192, 192]
    # the report
    md = (out / "report" / "accuracy.md").read_text()
    assert "### BBBC039 val" in md and "| 2x | LoG |" in md and "Otsu+WS" in md
    png = out / "report" / "accuracy_scale.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the rows streamed for --resume are folded into the JSON at the end
    assert not (out / "acc.json.rows.jsonl").exists()


def test_resume_reuses_rows(fake_root, tmp_path, monkeypatch) -> None:
    out = tmp_path / "v.json"
    argv = ["bench", "accuracy", "--data", str(fake_root), "--sets", "vgg", "--no-segment"]
    argv += ["--quiet", "--json", str(out)]
    assert cli.main(argv) == 0
    first = json.loads(out.read_text())

    def fail(*a, **k):
        raise AssertionError("a finished image was measured again")

    monkeypatch.setattr(bench, "evaluate_image", fail)
    assert cli.main(argv + ["--resume"]) == 0  # from the finished JSON
    again = json.loads(out.read_text())
    assert again["results"] == first["results"]
    # an interrupted run: only the row stream exists, with a half-written last line
    rows = "".join(json.dumps(r) + "\n" for r in first["images"]) + '{"set": "vg'
    Path(str(out) + ".rows.jsonl").write_text(rows)
    out.unlink()
    assert cli.main(argv + ["--resume"]) == 0
    assert json.loads(out.read_text())["results"] == first["results"]


def test_missing_data_root_exits_2_with_one_line(tmp_path, capsys) -> None:
    rc = cli.main(["bench", "accuracy", "--data", str(tmp_path / "nowhere"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "data root" in err and "nowhere" in err


def test_bad_arguments_exit_2(fake_root, tmp_path, capsys) -> None:
    base = ["bench", "accuracy", "--data", str(fake_root), "--quiet"]
    assert cli.main(base + ["--sets", "bbbc039,nope"]) == 2
    assert cli.main(base + ["--scales", "x"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["bench", "accuracy", "--data", str(empty), "--sets", "vgg"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 3 and all(ln.startswith("nalu-count: error:") for ln in lines)


def test_default_data_root_follows_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NALU_COUNT_DATA", str(tmp_path))
    assert bench.default_data_root() == tmp_path
    monkeypatch.delenv("NALU_COUNT_DATA")
    assert bench.default_data_root() == Path("..") / "shared" / "data"


def test_background_option_reaches_count_and_is_recorded(fake_root, tmp_path, monkeypatch) -> None:
    import napari_nalu_count.infer as infer

    seen: list = []
    real_count = infer.count

    def spy(*a, **k):
        seen.append(k.get("background", "absent"))
        return real_count(*a, **k)

    monkeypatch.setattr(infer, "count", spy)
    base = ["bench", "accuracy", "--data", str(fake_root), "--sets", "vgg", "--no-segment"]
    base += ["--no-baselines", "--quiet"]
    out = tmp_path / "bg.json"
    assert cli.main(base + ["--background", "8", "--json", str(out)]) == 0
    assert seen and set(seen) == {8.0}
    assert json.loads(out.read_text())["settings"]["background"] == 8.0
    seen.clear()
    assert cli.main(base + ["--background", "off"]) == 0
    assert seen and set(seen) == {False}
    seen.clear()
    assert cli.main(base) == 0  # not given: count()'s own default
    assert seen and set(seen) == {"auto"}
    seen.clear()
    assert cli.main(base + ["--background", "auto"]) == 0
    assert seen and set(seen) == {"auto"}
    assert cli.main(base + ["--background", "1"]) == 2  # narrower than 2 diameters
