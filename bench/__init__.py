"""claude-db benchmarks: the product against raw baselines and peers, as paired runs.

Run ``python -m bench`` (``--quick`` for a pass under two minutes); see bench/README.md.
"""
