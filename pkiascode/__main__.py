"""``python -m pkiascode`` is ``pki``."""

from ._console import main

main()
