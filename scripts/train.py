"""Loop step 4: fine-tune on a built dataset.

Same as `python -m dam_loop.steps.train`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_loop.steps.train import main

raise SystemExit(main())
