"""The nightly loop: pull -> build -> pseudo-label -> train -> evaluate -> promote.

Same as `python -m dam_loop.steps.nightly`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_loop.steps.nightly import main

raise SystemExit(main())
