"""Screenshots of the napari widgets for the docs (``docs/screenshots/*.png``).

    xvfb-run -a python scripts/screenshots.py [--count-model M] [--segment-model M]

Opens napari with the bundled samples, runs each dock widget the way a user would (pick, click
Run, wait) and saves the whole window: ``count.png`` (BBBC039 crop, density, cells and two
regions), ``regions.png`` (the Count in regions dock on that density map), ``segment.png``,
``stack.png`` (time-lapse with the per-frame table), ``finetune.png`` (fine-tuning on dots,
live curves, before/after) and ``count_finetuned.png`` (the same image counted again with the
new model), and for issue 15: ``measure.png`` (Segment with a pixel size and an atlas Labels
layer as regions: per-object measurements and counts per region), ``volume.png`` (a synthetic
Z-stack counted as a volume: 3-D cells beside the per-plane table), ``batch.png`` (the Run on
folder dock over ``sample_data/`` with one unreadable file), and ``count_background.png`` (the
BBBC039 crop under a ramp of light, counted with the defaults: the background found uneven
and flattened). Models default to the bundled ones.
``--theme light`` shoots napari's light theme.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
PLUGIN = "napari-nalu-count"


def wait_for(widget, timeout: float = 900.0) -> None:
    """Let Qt run until the widget's job finished."""
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("widget did not finish in time")
    settle()


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.02)


def shoot(viewer, name: str) -> Path:
    import imageio.v3 as iio

    settle()
    image = viewer.screenshot(canvas_only=False, flash=False)
    path = OUT / name
    iio.imwrite(path, np.asarray(image))
    print(f"wrote {path} {image.shape}")
    return path


def dock(viewer, title: str, tabify: bool = False):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title, tabify=tabify)
    settle()
    return widget


def choose(combo, value) -> None:
    """Pick ``value`` in a dock's picker (a magicgui ComboBox), as a click would."""
    if value not in combo.choices:
        raise SystemExit(f"{value!r} is not offered; have {list(combo.choices)}")
    combo.value = value


def close_docks(viewer) -> None:
    viewer.window.remove_dock_widget("all")
    settle()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count-model", default="nuclei-count")
    parser.add_argument("--segment-model", default="nuclei-seg")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--only", nargs="*", default=None, help="subset of the shots")
    parser.add_argument("--theme", default="dark", choices=("dark", "light"))
    parser.add_argument("--suffix", default="", help="appended to each file name")
    args = parser.parse_args(argv)
    want = set(
        args.only or ["count", "regions", "segment", "stack", "measure", "volume", "batch",
                      "finetune", "loop", "background"]
    )  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)

    import napari
    from napari.settings import get_settings

    # no toasts over the canvas (they would cover the pictures)
    get_settings().application.gui_notification_level = "error"
    viewer = napari.Viewer(title="napari-nalu-count")
    viewer.window.resize(1500, 950)
    viewer.theme = args.theme

    def shot(name: str) -> Path:
        return shoot(viewer, name.replace(".png", f"{args.suffix}.png"))

    if "count" in want:
        viewer.open_sample(PLUGIN, "bbbc039_crop")
        viewer.add_shapes(
            [[[16, 16], [120, 120]], [[140, 120], [240, 240]]],
            shape_type="rectangle",
            name="regions",
            edge_color="cyan",
            face_color="transparent",
            edge_width=2,
        )
        count = dock(viewer, "Count cells")
        choose(count.model_combo, args.count_model)
        choose(count.regions_combo, viewer.layers["regions"])
        choose(count.image_combo, viewer.layers["BBBC039 crop"])
        count.run()
        wait_for(count)
        viewer.layers.selection.active = viewer.layers["BBBC039 crop cells"]
        shot("count.png")
        close_docks(viewer)
        if "regions" in want:
            regions = dock(viewer, "Count in regions")
            choose(regions.regions_combo, viewer.layers["regions"])
            regions.count()
            viewer.layers.selection.active = viewer.layers["regions"]
            shot("regions.png")
            close_docks(viewer)
        viewer.layers.clear()

    if "loop" in want:  # issue 16: count ± sd, the uncertainty map, suggested boxes, edits
        viewer.open_sample(PLUGIN, "bbbc039_crop")
        count = dock(viewer, "Count cells")
        choose(count.model_combo, args.count_model)
        choose(count.image_combo, viewer.layers["BBBC039 crop"])
        count.uncertainty_check.value = True
        count.run()
        wait_for(count)
        count.n_boxes_spin.setValue(3)
        count.box_size_spin.setValue(64)
        count.suggest_regions()
        viewer.layers["BBBC039 crop uncertainty"].visible = True
        viewer.layers["BBBC039 crop density"].visible = False
        cells = viewer.layers["BBBC039 crop cells"]
        cells.add([[30.0, 200.0], [220.0, 40.0]])  # two cells the user adds while proofreading
        viewer.layers.selection.active = cells
        shot("loop.png")
        close_docks(viewer)
        viewer.layers.clear()

    if "background" in want:
        # the BBBC039 crop under a smooth ramp of illumination (0.6x its 1-99.8 % range, as the
        # uneven_bg copies of benchmarks/appearance_robustness.py): counted with the defaults,
        # the dock says the background was found uneven and flattened
        import numpy as np

        viewer.open_sample(PLUGIN, "bbbc039_crop")
        crop = viewer.layers["BBBC039 crop"].data
        lo, hi = np.percentile(crop, [1.0, 99.8])
        h, w = crop.shape
        ramp = (np.arange(w, dtype=np.float32) / (w - 1))[None, :] * np.ones((h, 1), np.float32)
        lit = crop.astype(np.float32) + 0.6 * float(hi - lo) * ramp
        top = float(np.iinfo(crop.dtype).max) if crop.dtype.kind in "ui" else float(lit.max())
        lit = np.clip(np.rint(lit), 0, top).astype(crop.dtype)
        viewer.layers.clear()
        viewer.add_image(lit, name="BBBC039 crop, uneven light")
        count = dock(viewer, "Count cells")
        choose(count.model_combo, args.count_model)
        count.run()
        wait_for(count)
        viewer.layers.selection.active = viewer.layers["BBBC039 crop, uneven light cells"]
        shot("count_background.png")
        close_docks(viewer)
        viewer.layers.clear()

    if "segment" in want:
        viewer.open_sample(PLUGIN, "bbbc039_crop")
        segment = dock(viewer, "Segment cells")
        choose(segment.model_combo, args.segment_model)
        segment.run()
        wait_for(segment)
        shot("segment.png")
        close_docks(viewer)
        viewer.layers.clear()

    if "stack" in want:
        viewer.open_sample(PLUGIN, "synthetic_timelapse")
        count = dock(viewer, "Count cells")
        choose(count.model_combo, args.count_model)
        count.diameter_edit.value = "estimate"  # synthetic cells are smaller than BBBC039's
        count.run()
        wait_for(count)
        viewer.dims.set_current_step(0, 3)
        shot("stack.png")
        close_docks(viewer)
        viewer.layers.clear()

    if "measure" in want:
        viewer.open_sample(PLUGIN, "bbbc039_crop")
        atlas = np.zeros((256, 256), np.int32)
        atlas[:, :128], atlas[:, 128:] = 1, 2  # two "anatomical regions"
        viewer.add_labels(atlas, name="atlas", opacity=0.15)
        segment = dock(viewer, "Segment cells")
        choose(segment.model_combo, args.segment_model)
        choose(segment.regions_combo, viewer.layers["atlas"])
        segment.pixel_edit.value = "0.65"
        segment.run()
        wait_for(segment)
        viewer.layers.selection.active = viewer.layers["BBBC039 crop labels"]
        shot("measure.png")
        close_docks(viewer)
        viewer.layers.clear()

    if "volume" in want:
        from napari_nalu_count.data.synthetic import synthetic_volume

        stack = synthetic_volume((16, 192, 192), n_cells=30, diameter=14.0, seed=0).image
        viewer.add_image(stack, name="z-stack")
        count = dock(viewer, "Count cells")
        choose(count.model_combo, args.count_model)
        count.axes_edit.value = "ZYX"
        count.diameter_edit.value = "14"
        count.volume_check.value = True
        count.run()
        wait_for(count)
        viewer.dims.set_current_step(0, 8)
        viewer.layers["z-stack cells"].visible = False
        shot("volume.png")
        close_docks(viewer)
        viewer.layers.clear()

    if "batch" in want:
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp()) / "my_images"
        folder.mkdir()
        for name in ("bbbc039_crop256.tif", "synthetic_low.tif", "synthetic_high.tif"):
            shutil.copy(ROOT / "sample_data" / name, folder / name)
        (folder / "corrupt.tif").write_bytes(b"not an image")
        batch = dock(viewer, "Run on folder")
        batch.inputs_edit.value = str(folder)
        choose(batch.model_combo, args.count_model)
        batch.pixel_edit.value = "0.65"
        batch.csv_edit.value = str(folder.parent / "counts.csv")
        batch.run()
        wait_for(batch)
        shot("batch.png")
        close_docks(viewer)
        viewer.layers.clear()

    if "finetune" in want:
        viewer.open_sample(PLUGIN, "synthetic_high")
        truth = viewer.layers["synthetic high true cells"]
        truth.visible = True
        truth.name = "my dots"
        finetune = dock(viewer, "Fine-tune model")
        row = finetune.pairs.rows[0]
        choose(row.image_combo, viewer.layers["synthetic high"])
        choose(row.annotation_combo, truth)
        choose(finetune.model_combo, args.count_model)
        finetune.name_edit.value = "my-nuclei-count"
        finetune.replace_check.value = True  # a rerun of this script replaces its own model
        finetune.epochs_spin.value = args.epochs
        finetune.steps_spin.value = args.steps
        finetune.run()
        wait_for(finetune, timeout=1800)
        if finetune.result is None:
            print("fine-tuning saved no model:", finetune.status_label.text(), file=sys.stderr)
            return 1
        shot("finetune.png")
        if args.theme == "dark":  # the loss plot follows napari's theme
            viewer.theme = "light"
            shot("finetune_light.png")
            viewer.theme = "dark"

        count = dock(viewer, "Count cells", tabify=True)
        choose(count.model_combo, "my-nuclei-count")
        choose(count.image_combo, viewer.layers["synthetic high"])
        count.run()
        wait_for(count)
        viewer.layers["my dots"].visible = False
        shot("count_finetuned.png")

    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
