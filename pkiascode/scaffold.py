"""``pki init``: a new pki.toml, ``state/``, a ``.gitignore`` that keeps ``.pki/`` out of git."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import PkiError

__all__ = ["EXAMPLES", "init_project", "example_text"]

EXAMPLES = ("kubernetes-the-hard-way",)

MINIMAL = """\
# pki.toml: the desired PKI. `pki plan` shows what would change, `pki apply` makes it.

[defaults]
key = "ecdsa-p256"
validity = "1y"
renew_before = "30d"
subject = { O = "Example" }

[authority.root]
common_name = "Example Root CA"
validity = "10y"
renew_before = "1y"

[certificate.example]
issuer = "root"
common_name = "example.internal"
hosts = ["example.internal", "127.0.0.1"]
"""

STATE_README = """\
# state/

Written by `pki apply` and committed to git. Public material only:

- `certs/NAME.pem`: the current certificate of each authority and certificate
- `crl/NAME.crl`: the current CRL of each authority
- `inventory.json`: one record per object (serial, fingerprint, validity, issuer, key backend and
  reference, the spec it was made from); never key material
- `audit.jsonl`: the hash-chained log of every change (`pki audit verify` checks it)

Private keys live in the key backends (by default `.pki/keys/`, git-ignored), never here.
"""


def example_text(name: str) -> str:
    if name not in EXAMPLES:
        raise PkiError(f"unknown example {name!r}; available: {', '.join(EXAMPLES)}")
    return resources.files("pkiascode").joinpath(f"examples/{name}.toml").read_text(encoding="utf-8")


def init_project(directory: Path, *, example: str | None) -> list[str]:
    """Create the files; returns what was done, one line each. Never overwrites a pki.toml."""
    directory.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    config = directory / "pki.toml"
    if config.exists():
        raise PkiError(f"{config} already exists; edit it, or init another directory")
    config.write_text(example_text(example) if example else MINIMAL, encoding="utf-8")
    done.append(f"wrote {config.name}" + (f" (example: {example})" if example else ""))

    state = directory / "state"
    state.mkdir(exist_ok=True)
    readme = state / "README.md"
    if not readme.exists():
        readme.write_text(STATE_README, encoding="utf-8")
        done.append("created state/")

    gitignore = directory / ".gitignore"
    lines = gitignore.read_text(encoding="utf-8").splitlines() if gitignore.exists() else []
    if not any(line.strip() in (".pki", ".pki/", "/.pki", "/.pki/") for line in lines):
        with open(gitignore, "a", encoding="utf-8") as f:
            if lines and lines[-1].strip():
                f.write("\n")
            f.write("# pkiascode: local key store, cache and lock; never commit\n.pki/\n")
        done.append("added .pki/ to .gitignore")

    from .gitops import find_repository

    if find_repository(directory) is None:
        import git

        git.Repo.init(directory)
        done.append("initialised a git repository")
    return done
