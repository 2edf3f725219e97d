"""Sample images shipped with the package (installed as ``napari_nalu_count.sample_data``).

See ``README.md`` in this folder for their sources and licences.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent


def sample_path(name: str) -> Path:
    """Path of a bundled sample file; raises FileNotFoundError naming what exists."""
    path = SAMPLE_DIR / name
    if not path.is_file():
        have = sorted(p.name for p in SAMPLE_DIR.iterdir() if p.suffix in {".tif", ".csv"})
        raise FileNotFoundError(f"no sample file {name!r} in {SAMPLE_DIR}; have: {have}")
    return path
