"""Loop step 2: build the dataset folder of a snapshot.

Same as `python -m dam_loop.steps.build`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_loop.steps.build import main

raise SystemExit(main())
