"""The run folder in one place: write, read, verify, lineage (docs/index.md).

A run folder is written by the trainer and read by every surface (predict, evaluate, explain, search,
serve); this package is the only code that knows its layout.
"""
