"""Shared fixtures for the whole suite (the helpers they use are in helpers.py; the vault/ and pkcs11/
conftest.py files add the Vault servers and SoftHSM2).

- ``env``: the environment subprocesses run in (fixed git identity, no user/system git config, no
  colour, ``PKI_ACTOR=pki-test@ci``); also set on ``os.environ`` for the test's own git/openssl calls.
- ``repo``: an empty git repository in a temporary directory.
- ``pki``: runs the real ``pki`` console script as ``pki -C repo ...`` and returns a `helpers.Result`
  (returncode, stdout, stderr); ``pki(..., expect=0)`` asserts the exit code and shows the output.
- ``project``: ``repo`` with the small ECDSA root → intermediate → server/client pki.toml and a
  .gitignore for .pki/, nothing applied yet.
- ``make_project``: more such projects (another PKI, a second clone, ...).
- ``openssl_and_git``: skips a test without openssl or git (fails it when ``$CI`` is set).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import SMALL_PKI, Pki, clean_env, git_init, new_repo, require_tool, write_project  # noqa: E402


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = clean_env()
    for key in [k for k in list(os.environ) if k.startswith(("GIT_", "PKI_"))]:
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def openssl_and_git() -> None:
    """For ``pytest.mark.usefixtures``: skip without openssl or git (fail in CI)."""
    require_tool("openssl")
    require_tool("git")


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> Path:
    return git_init(tmp_path / "repo")


@pytest.fixture
def pki(repo: Path, env: dict[str, str]) -> Pki:
    return Pki(repo, env)


@pytest.fixture
def project(repo: Path) -> Path:
    write_project(repo, SMALL_PKI)
    return repo


@pytest.fixture
def make_project(tmp_path: Path, env: dict[str, str]) -> Callable[..., tuple[Path, Pki]]:
    """``make_project("other", toml)`` → (directory, pki) for another git repository."""

    def make(name: str, toml: str = SMALL_PKI, *, init_git: bool = True) -> tuple[Path, Pki]:
        directory = tmp_path / name
        if init_git:
            new_repo(directory, toml)
        else:
            write_project(directory, toml)
        return directory, Pki(directory, env)

    return make
