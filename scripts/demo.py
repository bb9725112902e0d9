"""The local demo: Label Studio + S3 + the backend with a demo project.

Same as `python -m dam_tools.demo`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_tools.demo import main

raise SystemExit(main())
