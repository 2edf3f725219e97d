"""Regenerate the files in ``sample_data/`` (BBBC039 crops and synthetic images).

    python scripts/make_sample_data.py [--bbbc039 ../shared/data/bbbc039]

The BBBC039 crops come from an image of the validation split (``val.txt``), so the bundled
models never trained on them. Their ground-truth counts are the number of nuclei in the crop's
mask: 4-connected components of each value 1, 2, 3 of the mask's red channel, counted
separately (touching nuclei are stored with different values), including nuclei cut by the
crop's border. Synthetic images come from :mod:`napari_nalu_count.data.synthetic` with fixed
seeds, so their counts are exact.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from napari_nalu_count._sample_data import (
    BBBC039_CROPS,
    BBBC039_IMAGE,
    SYNTHETIC,
    TIMELAPSE,
    TIMELAPSE_FILE,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sample_data"


def mask_count(mask_rgb: np.ndarray) -> int:
    """Number of nuclei in a BBBC039 mask (red channel values 1, 2, 3; 4-connectivity)."""
    red = mask_rgb[..., 0] if mask_rgb.ndim == 3 else mask_rgb
    four = ndi.generate_binary_structure(2, 1)
    return int(sum(ndi.label(red == v, structure=four)[1] for v in (1, 2, 3)))


def write_tif(name: str, data: np.ndarray, axes: str) -> None:
    tifffile.imwrite(OUT / name, data, compression="zlib", metadata={"axes": axes})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bbbc039", type=Path, default=ROOT.parent / "shared" / "data" / "bbbc039")
    args = parser.parse_args(argv)
    rows: list[tuple[str, int]] = []
    frame_rows: list[tuple[str, int, int]] = []

    image = tifffile.imread(args.bbbc039 / "images" / f"{BBBC039_IMAGE}.tif")
    import imageio.v3 as iio

    mask = iio.imread(args.bbbc039 / "masks" / f"{BBBC039_IMAGE}.png")
    for name, (r0, r1, c0, c1) in BBBC039_CROPS.items():
        write_tif(name, image[r0:r1, c0:c1], "YX")
        rows.append((name, mask_count(mask[r0:r1, c0:c1])))

    from napari_nalu_count.data.synthetic import synthetic_cells, synthetic_timelapse

    for name, kwargs in SYNTHETIC.items():
        sample = synthetic_cells(**kwargs)
        write_tif(name, sample.image, "YX")
        rows.append((name, len(sample.dots)))

    stack = synthetic_timelapse(**TIMELAPSE)
    write_tif(TIMELAPSE_FILE, stack.image, "TYX")
    frame_rows += [(TIMELAPSE_FILE, t, n) for t, n in enumerate(stack.meta["counts"])]

    with open(OUT / "counts.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "count"])
        writer.writerows(rows)
    with open(OUT / "timelapse_counts.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "frame", "count"])
        writer.writerows(frame_rows)
    for row in rows + frame_rows:
        print(*row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
