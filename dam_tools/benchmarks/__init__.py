"""One module per benchmark; see dam_tools/bench.py."""
