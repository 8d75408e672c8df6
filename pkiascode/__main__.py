"""``python -m pkiascode`` is ``pki``."""

from .cli import main

main()
