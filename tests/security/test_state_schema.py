"""Threat: committed state values that apply could not use (review F10, F11).

A revocation with a serial that is not hex, without a serial, a CRL validity that is not a number:
one line naming state/inventory.json, never "unexpected ValueError". A `.gitattributes` that makes
git check state/ out with CRLF line ends must not make a fresh clone reissue everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import Pki, assert_one_line, commit_all, edit_toml, git


@pytest.fixture
def applied(applied: tuple[Path, Pki]) -> tuple[Path, Pki]:
    """conftest's applied repository, with client revoked."""
    repo, pki = applied
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-1"\nrevoked = { reason = "superseded" }')
    commit_all(repo)
    pki.apply()
    return repo, pki


def _edit(repo: Path, edit) -> None:
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    edit(inv)
    path.write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")
    commit_all(repo, "a pull request")


@pytest.mark.parametrize("edit", [
    pytest.param(lambda inv: inv["revocations"][0].update(serial="zz"), id="serial-zz"),
    pytest.param(lambda inv: inv["revocations"][0].pop("serial"), id="no-serial"),
    pytest.param(lambda inv: inv["revocations"][0].update(date="soon"), id="date"),
    pytest.param(lambda inv: inv["revocations"][0].update(reason="because"), id="reason"),
    pytest.param(lambda inv: inv["objects"]["inter"]["crl"].update(validity="x"), id="crl-validity"),
    pytest.param(lambda inv: inv["objects"]["inter"]["crl"].update(number=-1), id="crl-number"),
])
def test_a_malformed_state_value_is_one_line_naming_the_inventory(applied, edit):
    repo, pki = applied
    assert json.loads((repo / "state/inventory.json").read_text())["revocations"], "the fixture revokes one"
    _edit(repo, edit)
    for args in (("plan",), ("apply", "--auto-approve", "--at", "+7d")):
        r = pki(*args, expect=1)
        line = assert_one_line(r.stderr.strip())
        assert "state/inventory.json" in line and "unexpected" not in line, line


def test_a_crlf_checkout_of_state_plans_nothing(applied, tmp_path):
    repo, pki = applied
    (repo / ".gitattributes").write_text("state/** text eol=crlf\n")
    commit_all(repo, "a pull request")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert b"\r\n" in (clone / "state/certs/server.pem").read_bytes(), "git checked state/ out with CRLF"
    assert Pki(clone).plan_exit("--offline") == 0
