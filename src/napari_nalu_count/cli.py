"""Command line front end: ``nalu-count SUBCOMMAND ...``.

This module only dispatches. Each subcommand lives in ``napari_nalu_count.commands.<name>``
(a module with ``configure(parser)`` and ``run(args) -> int``); each benchmark lives in
``napari_nalu_count.bench.<name>`` with the same two functions. Modules are imported lazily
so ``nalu-count --help`` is fast.

Exit status: 0 on success, 2 for bad arguments or unreadable input (one-line reason on stderr),
1 for other failures.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from napari_nalu_count import __version__
from napari_nalu_count.errors import Cancelled, NaluCountError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "count": ("napari_nalu_count.commands.count", "count cells in images (density regression)"),
    "segment": ("napari_nalu_count.commands.segment", "segment nuclei into instance labels"),
    "train": ("napari_nalu_count.commands.train", "train or fine-tune a model"),
    "tune": ("napari_nalu_count.commands.tune", "TPE search over FRE's B, X and the learning rate"),
    "models": ("napari_nalu_count.commands.models", "list bundled and user models"),
    "bench": ("napari_nalu_count.commands.bench", "run a benchmark (arithmetic, flops, speed)"),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nalu-count",
        description="Cell counting and segmentation with NALU-enhanced networks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        if not _available(module):
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip())
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except Cancelled:
        print("nalu-count: cancelled", file=sys.stderr)
        return 1
    except (NaluCountError, FileNotFoundError) as exc:
        print(f"nalu-count: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nalu-count: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
