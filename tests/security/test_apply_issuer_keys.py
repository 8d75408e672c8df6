"""Threat: a key reference edited in committed state makes apply sign with a key that is not the
issuer's (review F7, issue 10.4: "a key that does not match its certificate is used").

Before anything is signed, apply proves each authority key that will sign matches that authority's
certificate (`x509.prove_key`, once per issuer per run), and a certificate made again for a kept key
is made only for the key of the certificate it replaces. Otherwise: one line, nothing signed,
nothing committed, no key made.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import Pki, assert_one_line, commit_all, edit_toml, git, key_files, tree_snapshot


@pytest.fixture
def swapped(applied: tuple[Path, Pki]) -> tuple[Path, Pki]:
    """An applied PKI whose committed inventory has root's and inter's key references swapped (a PR)."""
    repo, pki = applied
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    objects = inv["objects"]
    objects["root"]["key"]["ref"], objects["inter"]["key"]["ref"] = \
        objects["inter"]["key"]["ref"], objects["root"]["key"]["ref"]
    path.write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")
    commit_all(repo, "swap the authority keys")
    return repo, pki


def _refused(repo: Path, pki: Pki, *args: str) -> None:
    before_state, before_head, before_keys = tree_snapshot(repo / "state"), git(repo, "rev-parse", "HEAD"), \
        key_files(repo)
    r = pki("apply", "--auto-approve", *args, expect=1)
    line = assert_one_line(r.stderr.strip())
    assert "refusing to sign" in line and "state/inventory.json" in line, line
    assert tree_snapshot(repo / "state") == before_state
    assert git(repo, "rev-parse", "HEAD") == before_head
    assert key_files(repo) == before_keys  # no key made


def test_swapped_authority_keys_sign_no_crl(swapped):
    repo, pki = swapped
    _refused(repo, pki, "--at", "+7d")  # the routine CRL refresh of both authorities


def test_swapped_authority_keys_sign_no_certificate(swapped):
    repo, pki = swapped
    edit_toml(repo, 'common_name = "localhost"', 'common_name = "localhost-2"')
    commit_all(repo)
    _refused(repo, pki)


def test_a_reissued_authority_is_not_made_for_another_key(swapped):
    repo, pki = swapped
    edit_toml(repo, 'common_name = "Test Root CA"', 'common_name = "Test Root CA 2"')
    commit_all(repo)
    _refused(repo, pki)
