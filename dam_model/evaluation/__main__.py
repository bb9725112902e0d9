"""``python -m dam_model.evaluation`` (the same as ``python -m dam_model evaluate``)."""
import sys

from .cli import main

sys.exit(main())
