"""Loop step 5: candidate vs champion on the frozen validation split.

Same as `python -m dam_loop.steps.evaluate`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_loop.steps.evaluate import main

raise SystemExit(main())
