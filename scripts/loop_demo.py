"""One nightly round on synthetic annotations, measured before and after.

Same as `python -m dam_tools.loop_demo`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_tools.loop_demo import main

raise SystemExit(main())
