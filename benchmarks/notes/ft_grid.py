#!/usr/bin/env python
"""Fine-tuning the bundled counter on a finer model grid (docs/models.md, "Fine-tuning on a
new set"): a copy of ``nuclei-count`` whose card diameter is ``GRID`` px instead of 12, then
``benchmarks/finetune_generalist.py`` on Aitslab (3 draws of 5 images, 2.5 min each).

    python benchmarks/notes/ft_grid.py 20 nocheck   # 'check' keeps the size head's check
    python benchmarks/notes/ft_grid.py 16 check --config dock --json OUT  # more options of
                                                    # finetune_generalist.py: they win

The size head was trained for the 12 px grid, so its check is switched off ('nocheck').
"""

import copy
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NALU_COUNT_MODEL_DIR", tempfile.mkdtemp(prefix="ft-grid-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import finetune_generalist as fg  # noqa: E402

from napari_nalu_count.infer import engine  # noqa: E402
from napari_nalu_count.models import load_model, save_model  # noqa: E402


def main() -> int:
    grid, mode = float(sys.argv[1]), sys.argv[2]
    engine.OPTIONS["size_check"] = mode == "check"
    start = load_model("nuclei-count")
    card = copy.deepcopy(start.card)
    card["diameter"] = grid
    out = Path(tempfile.mkdtemp(prefix="ft-grid-start-"))
    path = save_model(start.net, card, f"nc{int(grid)}", directory=out, overwrite=True)
    return fg.main(
        ["--data", "../shared/data", "--set", "aitslab", "--seeds", "0", "1", "2"]
        + ["--minutes", "2.5", "--threads", "2", "--model", str(path)]
        + ["--json", f"finetune_aitslab_grid{int(grid)}_{mode}.json"]
        + sys.argv[3:]
    )


if __name__ == "__main__":
    sys.exit(main())
