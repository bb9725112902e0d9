"""Benchmarks: `python scripts/bench.py NAME` prints its figures and ends with `RESULT NAME ratio=X`.

Each benchmark lives in scripts/benchmarks/<name>.py and exposes `run(args) -> float` (the ratio),
measured side by side in one run, because machines are noisy.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def available() -> list[str]:
    import scripts.benchmarks as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=available(), help="which benchmark to run")
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (benchmark default if unset)")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"scripts.benchmarks.{args.name}")
    ratio = module.run(args)
    print(f"RESULT {args.name} ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
