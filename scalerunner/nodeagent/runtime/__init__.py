"""Job runtimes on the node: one interface (base.py), a back end per file."""
