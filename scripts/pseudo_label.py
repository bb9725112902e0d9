"""Loop step 3: caption unannotated regions with the serving model.

Same as `python -m dam_loop.steps.pseudo_label`; run from a checkout once the project is installed (pip install -e .).
"""
from dam_loop.steps.pseudo_label import main

raise SystemExit(main())
