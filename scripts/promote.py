"""Loop step 6: promote a candidate, roll back, or show the pointer.

Same as `python -m dam_loop.steps.promote`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_loop.steps.promote import main

raise SystemExit(main())
