"""Processing algorithms of the ``aligncr`` provider; each one runs one ``python -m engine`` command."""
