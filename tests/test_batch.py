"""The batch engine (``infer.batch.run_batch``) and the CLI options built on it: regions,
pixel sizes, areas, measurements, volumes, cancel."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from napari_nalu_count.cli import main
from napari_nalu_count.errors import CancelToken, InputError
from napari_nalu_count.infer import count, segment
from napari_nalu_count.infer.batch import BatchEvent, run_batch
from napari_nalu_count.io_csv import CountsWriter


def _save_tiny(name: str, task: str) -> str:
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    arch = "unet_count" if task == "count" else "se_unet"
    net = build_model({"architecture": arch, "widths": [4, 8]})
    save_model(net, make_card(name, task, net.config, diameter=10.0), name)
    return name


def _img(seed: int, shape=(48, 56)) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape, n_cells=6, diameter=10.0, seed=seed).image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", _img(1))
    tifffile.imwrite(d / "b.tif", np.stack([_img(2), _img(3)]), photometric="minisblack")
    (d / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    return d


@pytest.fixture
def atlas(tmp_path: Path) -> Path:
    mask = np.zeros((48, 56), dtype=np.uint16)
    mask[:, :20] = 5
    mask[10:40, 30:] = 2
    path = tmp_path / "atlas.tif"
    tifffile.imwrite(path, mask)
    return path


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_plain_batch_writes_the_same_bytes_as_the_counts_writer(folder, tmp_path):
    model = _save_tiny("b-count", "count")
    out = tmp_path / "t.csv"
    events: list[BatchEvent] = []
    res = run_batch(folder, "count", model, device="cpu", csv=out, progress=events.append)
    buf = io.StringIO()
    w = CountsWriter(buf)
    w.write(str(folder / "a.tif"), count(_img(1), model, device="cpu").count)
    w.write(
        str(folder / "b.tif"),
        count(np.stack([_img(2), _img(3)]), model, axes="TYX", device="cpu").count,
    )
    assert out.read_text() == buf.getvalue()
    assert res.header == ("file", "frame", "count") and len(res.rows) == 3
    assert [p.name for p in res.files] == ["a.tif", "b.tif"]
    assert len(res.skipped) == 1 and "broken.tif" in res.skipped[0][0]
    assert not res.ok and not res.cancelled and "1 input(s)" in res.message
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "tiles" in kinds
    assert kinds.count("file") == 2 and kinds.count("skipped") == 1
    df = res.to_frame()
    assert list(df.columns) == ["file", "frame", "count"] and len(df) == 3


def test_cancel_keeps_the_finished_rows_and_says_so(folder, tmp_path):
    model = _save_tiny("b-cancel", "count")
    token = CancelToken()

    def progress(event: BatchEvent) -> None:
        if event.kind == "file":
            token.cancel()  # after the first file

    out = tmp_path / "c.csv"
    res = run_batch(folder, "count", model, device="cpu", csv=out, progress=progress,
                    cancel=token)  # fmt: skip
    assert res.cancelled and "cancelled" in res.message and "1 of 3" in res.message
    assert [p.name for p in res.files] == ["a.tif"]
    assert out.read_text().splitlines() == ["file,frame,count", *[",".join(r) for r in res.rows]]


def test_regions_pixel_size_and_density_columns(folder, atlas, tmp_path):
    model = _save_tiny("b-regions", "count")
    res = run_batch(folder / "b.tif", "count", model, device="cpu", regions=atlas,
                    pixel_size=0.5, density_dir=tmp_path / "dens")  # fmt: skip
    assert res.header == ("file", "frame", "count", "region", "area_um2", "density_per_mm2")
    df = res.to_frame()
    assert list(df["region"].astype(str)) == ["all", "2", "5"] * 2
    assert list(df["frame"]) == [0, 0, 0, 1, 1, 1]
    dens = tifffile.imread(res.outputs[0])
    mask = tifffile.imread(atlas)
    for f in (0, 1):
        rows = df[df["frame"] == f].set_index(df[df["frame"] == f]["region"].astype(str))
        assert rows.loc["5", "count"] == pytest.approx(dens[f][mask == 5].sum(), abs=0.006)
        assert rows.loc["2", "area_um2"] == pytest.approx((mask == 2).sum() * 0.25)
        assert rows.loc["all", "area_um2"] == pytest.approx(48 * 56 * 0.25)
        expect = rows.loc["2", "count"] / ((mask == 2).sum() * 0.25 / 1e6)
        assert rows.loc["2", "density_per_mm2"] == pytest.approx(expect, rel=0.01, abs=0.01)
    # no pixel size: areas in pixels, densities per 10^6 px, and the header says so
    res = run_batch(folder / "a.tif", "count", model, device="cpu", areas=True)
    assert res.header == ("file", "frame", "count", "area_px", "density_per_mpx")
    assert res.rows[0][3] == str(48 * 56)


def test_segment_batch_regions_labels_and_measurements(folder, atlas, tmp_path):
    model = _save_tiny("b-seg", "segment")
    res = run_batch(folder, "segment", model, device="cpu", regions=atlas,
                    labels_dir=tmp_path / "labels", measure_csv=tmp_path / "m.csv",
                    engine_options={"seeds": "interior"})  # fmt: skip
    df = res.to_frame()
    assert set(df["region"].astype(str)) == {"all", "2", "5"}
    labels_files = sorted((tmp_path / "labels").glob("*.tif"))
    assert [p.name for p in labels_files] == ["a_labels.tif", "b_labels.tif"]
    m = res.measurements
    assert list(m.columns[:3]) == ["file", "label", "frame"] and "area_px" in m
    assert m.attrs["units"] == "px"
    on_disk = pd.read_csv(tmp_path / "m.csv")
    assert len(on_disk) == len(m)
    lab_b = tifffile.imread(tmp_path / "labels" / "b_labels.tif")
    mine = m[m["file"].str.endswith("b.tif")]
    assert len(mine) == sum(len(np.unique(p)) - 1 for p in lab_b)
    # region counts: objects whose centroid is in the region
    from napari_nalu_count.analysis import objects_in_regions

    table = objects_in_regions(lab_b, tifffile.imread(atlas))
    rows = df[df["file"].str.endswith("b.tif") & (df["region"].astype(str) != "all")]
    np.testing.assert_array_equal(rows["count"].to_numpy(), table.counts.ravel())


def test_volume_rows_say_which_they_are(tmp_path):
    from napari_nalu_count.data.synthetic import synthetic_volume

    model = _save_tiny("b-vol", "count")
    vol = synthetic_volume((10, 48, 48), n_cells=5, diameter=10.0, seed=0).image
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, vol, imagej=True, metadata={"axes": "ZYX"})
    res = run_batch(path, "count", model, device="cpu", volume=True)
    assert res.header == ("file", "frame", "count", "kind")
    kinds = [r[3] for r in res.rows]
    assert kinds == ["plane"] * 10 + ["volume"]
    direct = count(vol, model, axes="ZYX", device="cpu", volume=True)
    assert res.rows[-1][1] == "0" and float(res.rows[-1][2]) == direct.volume_count
    # a 2-D image cannot be counted as a volume: skipped with the reason
    tifffile.imwrite(tmp_path / "flat.tif", _img(4))
    res = run_batch(tmp_path / "flat.tif", "count", model, device="cpu", volume=True)
    assert not res.files and "Z axis" in res.skipped[0][1]


def test_argument_errors():
    with pytest.raises(InputError):
        run_batch([], "count", "nuclei-count")
    with pytest.raises(InputError):
        run_batch(".", "classify", "nuclei-count")
    with pytest.raises(InputError):
        run_batch(".", "count", "nuclei-count", measure=True)
    with pytest.raises(InputError):
        run_batch(".", "count", "nuclei-count", pixel_size=-1)


def test_cli_regions_pixel_size_measure_volume(folder, atlas, tmp_path, capsys):
    model = _save_tiny("b-cli", "count")
    seg = _save_tiny("b-cli-seg", "segment")
    out = tmp_path / "r.csv"
    rc = main(["count", str(folder / "a.tif"), "--model", model, "--device", "cpu",
               "--regions", str(atlas), "--pixel-size", "0.5,0.25", "--csv", str(out)])  # fmt: skip
    assert rc == 0
    rows = _rows(out.read_text())
    assert list(rows[0]) == ["file", "frame", "count", "region", "area_um2", "density_per_mm2"]
    assert float(rows[0]["area_um2"]) == pytest.approx(48 * 56 * 0.125)
    mcsv = tmp_path / "m.csv"
    rc = main(["segment", str(folder / "a.tif"), "--model", seg, "--seeds", "interior",
               "--device", "cpu", "--measure-csv", str(mcsv), "--pixel-size", "0.5"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "file,frame,count,area_um2,density_per_mm2"
    m = pd.read_csv(mcsv)
    assert "area_um2" in m and "equivalent_diameter_um" in m
    # --volume on a 2-D image: skipped with a reason, exit 2
    rc = main(["count", str(folder / "a.tif"), "--model", model, "--device", "cpu", "--volume"])
    err = capsys.readouterr().err
    assert rc == 2 and "Z axis" in err
    with pytest.raises(SystemExit) as exc:
        main(["count", str(folder), "--pixel-size", "zero"])
    assert exc.value.code == 2
    # a missing region mask is a bad argument: exit 2 before any work
    rc = main(["count", str(folder), "--model", model, "--regions", str(tmp_path / "no.tif")])
    assert rc == 2


def test_segment_direct_call_regions_match(folder, atlas):
    """The engine's per-file rows use the same numbers as calling segment() directly."""
    seg = _save_tiny("b-seg2", "segment")
    res = run_batch(folder / "a.tif", "segment", seg, device="cpu",
                    engine_options={"seeds": "interior"})  # fmt: skip
    direct = segment(_img(1), seg, device="cpu", seeds="interior")
    assert res.rows == [[str(folder / "a.tif"), "0", str(direct.count)]]


def test_diameter_column_records_the_size_used(folder: Path, tmp_path: Path, capsys) -> None:
    """``--diameter-column`` adds ``diameter_px`` last: the given diameter, the estimated one
    (``auto``), or empty when the model's grid is used unchanged; the plain table is unchanged
    without it."""
    name = _save_tiny("batch-dcol", "count")
    a = folder / "a.tif"

    def table(*extra: str) -> list[dict]:
        out = tmp_path / "t.csv"
        assert main(["count", str(a), "--model", name, "--device", "cpu", "--csv", str(out),
                     *extra]) == 0  # fmt: skip
        return _rows(out.read_text())

    plain = table()
    assert list(plain[0]) == ["file", "frame", "count"]
    given = table("--diameter", "14", "--diameter-column")
    assert list(given[0]) == ["file", "frame", "count", "diameter_px"]
    assert given[0]["diameter_px"] == "14.00"
    assert given[0]["count"] == table("--diameter", "14")[0]["count"]
    auto = table("--diameter", "auto", "--diameter-column")
    res = count(tifffile.imread(a), name, diameter="auto", device="cpu")
    assert res.diameter_source == "estimated"
    assert auto[0]["diameter_px"] == f"{res.diameter:.2f}"
    assert 3.0 < float(auto[0]["diameter_px"]) < 200.0
    none = table("--diameter-column")
    assert none[0]["diameter_px"] == ""
    # regions rows carry the image's diameter too
    batch = run_batch([a], "count", name, diameter=14.0, device="cpu", diameter_column=True,
                      regions=np.ones((48, 56), dtype=np.uint8))  # fmt: skip
    assert batch.header[-1] == "diameter_px"
    assert {r[-1] for r in batch.rows} == {"14.00"}
