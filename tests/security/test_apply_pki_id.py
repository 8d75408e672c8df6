"""Threat: a pull request changes ``[pki] id`` to another PKI's, whose keys in a shared store then
look like this PKI's (orphans to `pki prune`) (review F6).

The committed inventory records the id it was applied with; apply refuses a pki.toml whose id
differs, in one line, before anything changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, assert_one_line, commit_all, edit_toml, git, new_repo, tree_snapshot

OURS, THEIRS = "ours12345678", "theirs123456"


@pytest.fixture
def applied(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Pki]:
    repo = new_repo(tmp_path / "repo", f'[pki]\nid = "{OURS}"\n\n' + SMALL_PKI, commit=True)
    pki = Pki(repo)
    pki.apply()
    return repo, pki


def test_the_inventory_records_the_id(applied):
    repo, _ = applied
    assert json.loads((repo / "state/inventory.json").read_text())["pki_id"] == OURS


@pytest.mark.parametrize("new", [f'id = "{THEIRS}"', ""], ids=["changed", "removed"])
def test_apply_refuses_a_changed_id(applied, new):
    repo, pki = applied
    edit_toml(repo, f'id = "{OURS}"', new)
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')  # a change to apply
    commit_all(repo, "a pull request")
    before, head = tree_snapshot(repo / "state"), git(repo, "rev-parse", "HEAD")
    r = pki("apply", "--auto-approve", expect=1)
    line = assert_one_line(r.stderr.strip())
    assert f"the [pki] id changed from {OURS} to" in line and (THEIRS in line if new else "removed" in line), line
    assert tree_snapshot(repo / "state") == before and git(repo, "rev-parse", "HEAD") == head
