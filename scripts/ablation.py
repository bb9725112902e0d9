"""The focal-prompt ablation in miniature.

Same as `python -m dam_tools.ablation`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_tools.ablation import main

raise SystemExit(main())
