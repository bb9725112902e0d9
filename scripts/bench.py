"""Benchmarks: python scripts/bench.py NAME.

Same as `python -m dam_tools.bench`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_tools.bench import main

raise SystemExit(main())
