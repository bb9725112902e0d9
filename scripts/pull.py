"""Loop step 1: pull Label Studio's S3 export into a snapshot.

Same as `python -m dam_loop.steps.pull`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_loop.steps.pull import main

raise SystemExit(main())
