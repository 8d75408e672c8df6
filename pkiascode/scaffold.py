"""``pki init``: a new pki.toml (with a random ``[pki] id``), ``state/``, a ``.gitignore`` that keeps
``.pki/`` out of git, and a ``.gitattributes`` that lets ``git diff`` show CRLs readably."""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from .errors import PkiError

__all__ = ["EXAMPLES", "init_project", "example_text", "new_pki_id", "with_pki_id", "is_id_edit", "GITATTRIBUTES",
           "LEGACY_COMMENT"]

#: CRLs are DER-in-PEM: git shows them through ``pki show --file`` once the driver is configured
#: (``git config diff.pki-crl.textconv "pki show --file"``; git never runs commands a repository names)
GITATTRIBUTES = "state/crl/*.crl diff=pki-crl\n"

EXAMPLES = ("kubernetes-the-hard-way",)

#: what `with_pki_id` writes next to a ``legacy_keys = true`` it adds
LEGACY_COMMENT = "keys made before the [pki] id keep their names: see the README, 'Several PKIs on one Vault'"

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


def new_pki_id() -> str:
    """A short random id for ``[pki] id``: 12 lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(12))


def with_pki_id(text: str, pki_id: str, legacy: Iterable[str] = ()) -> str:
    """pki.toml ``text`` with ``id = pki_id`` in its ``[pki]`` table (a table added at the end when
    there is none) and ``legacy_keys = true`` in the table of each backend in ``legacy`` (its keys were
    made before the id), everything else (comments, order, spacing) kept as it was."""
    import tomlkit

    doc = tomlkit.parse(text)
    for name in legacy:
        flag = tomlkit.item(True)
        table = doc["backend"][name]
        if not isinstance(table, tomlkit.items.InlineTable):
            flag.comment(LEGACY_COMMENT)
        table["legacy_keys"] = flag
    table = doc.get("pki")
    if table is None:
        table = tomlkit.table()
        table["id"] = pki_id
        table["id"].comment("scopes this PKI's keys and locks in shared key stores; never change it")
        text = tomlkit.dumps(doc)
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + sep + tomlkit.dumps(tomlkit.document().add("pki", table))
    table["id"] = pki_id
    return tomlkit.dumps(doc)


def is_id_edit(old: str, new: str) -> bool:
    """Whether pki.toml ``new`` is ``old`` with only what an apply adds to a PKI without a ``[pki] id``
    (`with_pki_id`): the id, and ``legacy_keys = true`` in backend tables that had no ``legacy_keys``.
    (A pending transaction that does more is not completed silently: `state.config_refusal`.)"""
    import tomllib

    try:
        before, after = tomllib.loads(old), tomllib.loads(new)
        pki_id = after.get("pki", {}).get("id")
        backends_before, backends_after = before.get("backend", {}), after.get("backend", {})
        legacy = [name for name, table in backends_after.items()
                  if isinstance(table, dict) and table.get("legacy_keys") is True and table.get("plugin") != "local"
                  and backends_before.get(name, {}).get("legacy_keys") is not True]
        return (isinstance(pki_id, str) and "id" not in before.get("pki", {})
                and with_pki_id(old, pki_id, legacy) == new)
    except (ValueError, TypeError, AttributeError, KeyError):
        return False


def _with_id(text: str) -> str:
    """pki.toml with ``id`` in its ``[pki]`` table (made at the top when there is none)."""
    line = f'id = "{new_pki_id()}"  # scopes this PKI\'s keys and locks in shared key stores; never change it\n'
    if "\n[pki]\n" in f"\n{text}":
        return f"\n{text}".replace("\n[pki]\n", f"\n[pki]\n{line}", 1)[1:]
    head, sep, rest = text.partition("\n\n")
    if head.startswith("#"):  # keep the opening comment first
        return f"{head}\n\n[pki]\n{line}\n{rest}" if sep else f"{head}\n\n[pki]\n{line}"
    return f"[pki]\n{line}\n{text}"


def init_project(directory: Path, *, example: str | None) -> list[str]:
    """Create the files; returns what was done, one line each. Never overwrites a pki.toml."""
    directory.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    config = directory / "pki.toml"
    if config.exists():
        raise PkiError(f"{config} already exists; edit it, or init another directory")
    config.write_text(_with_id(example_text(example) if example else MINIMAL), encoding="utf-8")
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

    attributes = directory / ".gitattributes"
    lines = attributes.read_text(encoding="utf-8").splitlines() if attributes.exists() else []
    if GITATTRIBUTES.strip() not in (line.strip() for line in lines):
        with open(attributes, "a", encoding="utf-8") as f:
            if lines and lines[-1].strip():
                f.write("\n")
            f.write("# pkiascode: `git diff` shows CRLs readably once you run\n"
                    "#   git config diff.pki-crl.textconv \"pki show --file\"\n" + GITATTRIBUTES)
        done.append("added a CRL diff driver to .gitattributes (enable it: "
                    "git config diff.pki-crl.textconv \"pki show --file\")")

    from .gitops import find_repository

    if find_repository(directory) is None:
        import git

        git.Repo.init(directory)
        done.append("initialised a git repository")
    return done
