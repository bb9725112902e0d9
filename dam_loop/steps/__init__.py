"""The loop's steps, one module each: pull, build, pseudo_label, train, evaluate, promote, and nightly (which runs them
in order). A step's helper modules are named after it (build_video, evaluate_report); the Label Studio format
comes from ls_io.

Every step runs as ``python -m dam_loop.steps.<step>`` (or its console command, e.g. ``dam-build``) and exits with
the codes in dam_loop.cli. Steps share data only through dam_loop.dataset (the dataset folder) and
dam_loop.models_root (promoted versions); nightly alone calls the other steps' functions.
"""
