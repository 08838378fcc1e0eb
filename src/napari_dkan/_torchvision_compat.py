"""Make ``import torchvision`` work when a CUDA torchvision wheel sits beside a CPU torch.

On machines where torch is the CPU build, pip can only find a CUDA build of torchvision
(0.28.0 for torch 2.13).  Importing it then fails with ``RuntimeError: operator
torchvision::nms does not exist`` because the compiled operator library does not match torch.
timm and transformers import torchvision, so every encoder would fail to load.

The fix: when (and only when) that exact error occurs, drop the half-imported torchvision
modules, declare the two operator schemas that torchvision's Python code registers fake
kernels for (``nms`` and ``qnms``), and import again.  Transforms, models, timm and
transformers then work; only compiled detection ops such as ``nms`` are missing, which this
project never uses.  Where torchvision imports normally (a matching CPU or CUDA install), this
is a no-op.
"""

from __future__ import annotations

import sys

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_done = False


def ensure_torchvision() -> None:
    """Import torchvision, applying the operator-schema workaround if needed (idempotent)."""
    global _done
    if _done:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        import torch.library

        for op in ("torchvision::nms", "torchvision::qnms"):
            try:
                torch.library.define(op, _SCHEMA)
            except RuntimeError:  # already defined by an earlier partial import
                pass
        import torchvision  # noqa: F401
    except ImportError:
        pass  # torchvision absent: timm/transformers will say so themselves if they need it
    _done = True
