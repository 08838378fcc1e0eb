"""The ``napari-dkan`` command: the engine from the shell.

Each command group lives in its own module and registers its sub-commands here.  A command
that reports figures accepts ``--json`` and then prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_dkan import __version__
from napari_dkan.cli import _cohort, _data, _demo, _engine, _features, _genes

_GROUPS = [_demo, _data, _genes, _features, _engine, _cohort]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-dkan",
        description="Predict spatial gene expression from H&E slides with DKAN.",
    )
    parser.add_argument("--version", action="version", version=f"napari-dkan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from napari_dkan.cli._output import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
