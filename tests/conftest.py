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
- ``applied``: (directory, pki) of a committed git repository with the small pki.toml applied, its
  state committed: a copy of one applied once per test process (`helpers.copy_repo`), so a test may
  change it freely. ``make_applied(toml)`` does the same for another pki.toml.
- ``applied_project``: ``project`` after ``pki apply`` (the same kind of copy), in ``repo``.
- ``openssl_and_git``: skips a test without openssl or git (fails it when ``$CI`` is set).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import (  # noqa: E402
    SMALL_PKI, Pki, applied_repo, clean_env, copy_repo, git_init, new_repo, require_tool, write_project,
)


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


@pytest.fixture(scope="session")
def _applied_templates(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """(pki.toml text, committed or not) → a repository applied from it, made once per test process
    and never changed: the fixtures below copy it."""
    templates: dict[tuple[str, bool], Path] = {}

    def template(toml: str, *, committed: bool = True) -> Path:
        if (toml, committed) not in templates:
            directory = tmp_path_factory.mktemp("applied") / "repo"
            if committed:
                applied_repo(directory, toml)
            else:
                write_project(git_init(directory), toml)
                Pki(directory).apply()
            assert Pki(directory).plan_exit() == 0, "the applied repository still plans changes"
            templates[toml, committed] = directory
        return templates[toml, committed]

    return template


@pytest.fixture
def make_applied(tmp_path: Path, env: dict[str, str],
                 _applied_templates: Callable[..., Path]) -> Callable[..., tuple[Path, Pki]]:
    """``make_applied(toml=SMALL_PKI, name="repo")`` → (directory, pki): a copy of a git repository
    with ``toml`` committed and applied."""

    def make(toml: str = SMALL_PKI, name: str = "repo") -> tuple[Path, Pki]:
        directory = copy_repo(_applied_templates(toml), tmp_path / name)
        return directory, Pki(directory, env)

    return make


@pytest.fixture
def applied(make_applied: Callable[..., tuple[Path, Pki]]) -> tuple[Path, Pki]:
    return make_applied()


@pytest.fixture
def applied_project(repo: Path, _applied_templates: Callable[..., Path]) -> Path:
    """``project`` after ``pki apply`` (pki.toml left uncommitted, state/ committed): ``repo`` replaced
    by a copy of one applied once per test process; ``pki`` runs in it."""
    shutil.rmtree(repo)
    return copy_repo(_applied_templates(SMALL_PKI, committed=False), repo)
