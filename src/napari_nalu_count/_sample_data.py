"""Sample data for napari's File > Open Sample menu.

The images are TIFFs in ``napari_nalu_count.sample_data`` (so ``nalu-count count`` can read the
same files); ``scripts/make_sample_data.py`` regenerates them from the constants below. For the
synthetic samples the exact cell centres are regenerated from the same seeds and added as a
hidden Points layer ("true cells"), handy as annotations for fine-tuning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]

#: BBBC039 validation-split image the crops come from, and the crop boxes (r0, r1, c0, c1)
BBBC039_IMAGE = "IXMtest_I12_s1_w18A06F07F-CD8F-4056-B041-3967BE48AD78"
BBBC039_CROPS = {
    "bbbc039_crop256.tif": (132, 388, 220, 476),
    "bbbc039_crop512.tif": (4, 516, 92, 604),
}
#: synthetic images: file -> synthetic_cells keyword arguments
SYNTHETIC = {
    "synthetic_low.tif": {"shape": (256, 256), "n_cells": 15, "diameter": 18.0, "seed": 101},
    "synthetic_high.tif": {"shape": (256, 256), "n_cells": 120, "diameter": 14.0, "seed": 102},
}
#: synthetic time-lapse: file and synthetic_timelapse keyword arguments
TIMELAPSE_FILE = "synthetic_timelapse.tif"
TIMELAPSE = {
    "n_frames": 5,
    "shape": (256, 256),
    "start": 12,
    "growth": 4.0,
    "diameter": 16.0,
    "seed": 103,
}


def _read(name: str) -> np.ndarray:
    import tifffile

    from napari_nalu_count.sample_data import sample_path

    return tifffile.imread(sample_path(name))


def _image(name: str, layer_name: str, **extra: Any) -> LayerData:
    from napari_nalu_count.sample_data import sample_path

    meta = {"name": layer_name, "metadata": {"sample_file": str(sample_path(name))}, **extra}
    return (_read(name), meta, "image")


def _true_points(dots: np.ndarray, layer_name: str) -> LayerData:
    return (
        np.asarray(dots, dtype=float),
        {
            "name": f"{layer_name} true cells",
            "visible": False,
            "size": 6,
            "face_color": "cyan",
            "border_width": 0,
        },
        "points",
    )


def bbbc039_crop() -> list[LayerData]:
    """256 x 256 crop of a BBBC039 U2OS nuclei image (Hoechst; CC0), 47 nuclei."""
    return [_image("bbbc039_crop256.tif", "BBBC039 crop")]


def bbbc039_large() -> list[LayerData]:
    """512 x 512 crop of the same BBBC039 image, 155 nuclei."""
    return [_image("bbbc039_crop512.tif", "BBBC039 512")]


def _synthetic(name: str, layer_name: str) -> list[LayerData]:
    from napari_nalu_count.data.synthetic import synthetic_cells

    truth = synthetic_cells(**SYNTHETIC[name])
    return [_image(name, layer_name), _true_points(truth.dots, layer_name)]


def synthetic_low() -> list[LayerData]:
    """Synthetic nuclei, 15 cells (exact centres in a hidden Points layer)."""
    return _synthetic("synthetic_low.tif", "synthetic low")


def synthetic_high() -> list[LayerData]:
    """Synthetic nuclei, 120 crowded cells (exact centres in a hidden Points layer)."""
    return _synthetic("synthetic_high.tif", "synthetic high")


def synthetic_timelapse() -> list[LayerData]:
    """Synthetic time-lapse, 5 frames of 256 x 256, 12 -> 48 cells."""
    from napari_nalu_count.data.synthetic import synthetic_timelapse as make

    truth = make(**TIMELAPSE)
    return [_image(TIMELAPSE_FILE, "synthetic time-lapse"), _true_points(truth.dots, "time-lapse")]
