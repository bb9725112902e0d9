"""Build (or reuse) the tiny trained DAM.

Same as `python -m dam_tools.build_tiny_model`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_tools.build_tiny_model import main

raise SystemExit(main())
