"""Export synthetic scenes or videos as Label Studio tasks.

Same as `python -m dam_tools.export_synthetic`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_tools.export_synthetic import main

raise SystemExit(main())
