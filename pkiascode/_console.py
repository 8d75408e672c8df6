"""The ``pki`` command's entry point: process-wide settings first, then the CLI.

A ``pki`` run is short and makes thousands of small objects that live until it ends (parsed
pki.toml, records, certificates): Python's cyclic garbage collector would scan them again and again
(about 5% of an apply of 1,000 certificates) to find nothing, so it runs rarely here. This is set
for the ``pki`` process only, never for a program that imports pkiascode.
"""

from __future__ import annotations

import gc


def tune() -> None:
    """The process-wide settings of a ``pki`` run (the benchmark's in-process runs call this too)."""
    gc.set_threshold(100_000, 50, 1000)


def main() -> None:
    tune()
    from .cli import main as cli_main

    cli_main()
