"""The counter's background gate off or on, counter only, `bench accuracy`'s sets and copies.

    python benchmarks/notes/r10_gate_ab.py off|on OUT.json

Runs ``nalu-count bench accuracy --data ../shared/data --diameter none --no-segment
--no-baselines --scale-limit 25 --threads 1`` in this process after setting
``engine.OPTIONS["gate_background"]``; compare two outputs with
``python benchmarks/accuracy_compare.py off=A.json on=B.json [--exclude-shape 603x1272]``.
"""

import sys

from napari_nalu_count.cli import main
from napari_nalu_count.infer import engine

engine.OPTIONS["gate_background"] = sys.argv[1] == "on"
sys.exit(
    main(
        [
            "bench",
            "accuracy",
            "--data",
            "../shared/data",
            "--diameter",
            "none",
            "--no-segment",
            "--no-baselines",
            "--scale-limit",
            "25",
            "--threads",
            "1",
            "--quiet",
            "--json",
            sys.argv[2],
        ]
    )
)
