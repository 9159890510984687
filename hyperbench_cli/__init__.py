"""``hyperbench``: a command-line client of the HyperBench REST API (``/api/v1/``).

A thin client: every command is one or a few HTTP requests (requests), shown as
tables (rich) or as JSON (``--json``). It never imports Django or the worker.
See docs/cli.md.
"""

__version__ = "0.1.0"
