"""``python -m ifusion_plugin fit --config recipes/twin.yaml``: the same as ``python -m ifusion_plugin.cli``."""

import sys

from .cli import run

sys.exit(run())
