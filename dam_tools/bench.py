"""Benchmarks: `python scripts/bench.py NAME` (or `python -m dam_tools.bench NAME`) prints its figures and ends with
`RESULT NAME ratio=X`.

Each benchmark lives in dam_tools/benchmarks/<name>.py and exposes `run(args) -> float` (the ratio),
measured side by side in one run, because machines are noisy.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil

from dam_tools import benchmarks


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=available(), help="which benchmark to run")
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (benchmark default if unset)")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"{benchmarks.__name__}.{args.name}")  # only the named one: imports are heavy
    ratio = module.run(args)
    print(f"RESULT {args.name} ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
