"""``napari-dkan demo``: open napari on a real sample with the bundled model's prediction."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_dkan.cli._output import add_json_flag, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="open napari on a real HER2ST section with the bundled model's prediction",
        description="Open napari with a HER2ST section: the slide, the measured expression and the "
        "bundled model's prediction of a gene side by side, the docks ready to use. The sample is "
        "downloaded once (checked by SHA-256) unless --data-dir names a local HER2ST copy.",
    )
    p.add_argument("--data-dir", type=Path, help="local HER2ST-layout folder (ST-cnts/, ST-spotfiles/, ST-imgs/)")
    p.add_argument("--section", default="C2", help="section to show (default C2)")
    p.add_argument("--gene", default="ERBB2", help="gene to show (default ERBB2)")
    p.add_argument("--model", type=Path, help="a run directory instead of the bundled model")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--screenshot", type=Path, help="save the view to this PNG and exit (no window needed; the default on a "
                   "Linux machine without a display, as ./napari-dkan-demo.png)")
    add_json_flag(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import os
    import sys

    from napari_dkan.demo import HEADLESS_SCREENSHOT, run_demo

    screenshot = args.screenshot
    if screenshot is None and sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        screenshot = Path(HEADLESS_SCREENSHOT)  # no screen to open a window on: show it as a picture
        print(f"no display: rendering the demo to {screenshot} instead of opening a window", file=sys.stderr)
    info = run_demo(args.data_dir, args.section, args.gene, screenshot, args.model, args.device)
    text = f"HER2ST {info['section']}: {info['gene']} predicted vs measured — {info['scores']}"
    if info.get("screenshot"):
        text += f" → {info['screenshot']}"
    emit(args, info, text)
    return 0
