"""python -m dam_preannotate (torchrun ... -m dam_preannotate for several GPUs)."""
import sys

from .cli import main

sys.exit(main())
