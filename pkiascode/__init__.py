"""pkiascode: PKI as code.

A declarative ``pki.toml`` describes authorities and certificates; ``pki plan`` shows what would
change and why; ``pki apply`` makes those changes through key-store plugins and commits the public
results (certificates, CRLs, inventory, audit log) to git. Private keys never enter git.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
