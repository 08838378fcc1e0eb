"""``python -m napari_dkan`` is the ``napari-dkan`` command (also usable under torchrun)."""

import sys

from napari_dkan.cli import main

sys.exit(main())
