"""Sub-commands of ``python -m engine``; see :mod:`engine.cli` for the contract each module follows."""
