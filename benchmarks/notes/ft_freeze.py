#!/usr/bin/env python
"""Fine-tuning with the counter's encoder and bottleneck frozen (docs/models.md, "Fine-tuning
on a new set"): ``benchmarks/finetune_generalist.py`` on Aitslab (3 draws of 5 images, 2.5 min
each) with every network the registry builds having ``PARTS`` set to ``requires_grad=False``
(the training loop optimises only parameters that require gradients).

    python benchmarks/notes/ft_freeze.py encoders,bottleneck
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import finetune_generalist as fg  # noqa: E402

from napari_nalu_count.nn import registry  # noqa: E402


def main() -> int:
    parts = tuple(sys.argv[1].split(","))
    build = registry.build_model

    def frozen_build(*args, **kwargs):
        net = build(*args, **kwargs)
        for name, p in net.named_parameters():
            if name.split(".")[0] in parts:
                p.requires_grad_(False)
        return net

    registry.build_model = frozen_build
    tag = "-".join(parts)
    return fg.main(
        ["--data", "../shared/data", "--set", "aitslab", "--seeds", "0", "1", "2"]
        + ["--minutes", "2.5", "--threads", "2"]
        + ["--json", f"finetune_aitslab_frozen_{tag}.json"]
    )


if __name__ == "__main__":
    sys.exit(main())
