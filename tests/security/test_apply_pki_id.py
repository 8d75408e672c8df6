"""Threat: a pull request changes ``[pki] id`` to another PKI's, whose keys in a shared store then
look like this PKI's (orphans to `pki prune`) (review F6).

The committed inventory records the id it was applied with; apply refuses a pki.toml whose id
differs, in one line, before anything changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, assert_one_line, commit_all, edit_toml, git, tree_snapshot
from pkiascode.scaffold import is_id_edit, with_pki_id

OURS, THEIRS = "ours12345678", "theirs123456"


@pytest.fixture
def applied(make_applied) -> tuple[Path, Pki]:
    return make_applied(f'[pki]\nid = "{OURS}"\n\n' + SMALL_PKI)


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


PRE_ID = ('# ours\n[backend.vault]  # shared\nplugin = "vault"\n\n[backend.files]\nplugin = "local"\n\n'
          '[authority.root]\ncommon_name = "Root"\nbackend = "vault"\n')


def test_a_journal_completes_only_the_edit_that_gives_pki_toml_its_id():
    """A pending transaction's pki.toml (``.pki/journal/``, not reviewed) is completed silently only
    when it is the id edit: the id, and legacy_keys = true in shared stores' tables, nothing else."""
    edited = with_pki_id(PRE_ID, OURS, ["vault"])
    assert edited.startswith('# ours\n[backend.vault]  # shared\nplugin = "vault"\nlegacy_keys = true # keys made')
    assert is_id_edit(PRE_ID, edited) and is_id_edit(PRE_ID, with_pki_id(PRE_ID, OURS))
    for forged in (with_pki_id(PRE_ID, OURS, ["files"]),  # (a local store has no legacy namespace)
                   edited.replace('common_name = "Root"', 'common_name = "Other"'),
                   edited.replace('plugin = "vault"\n', 'plugin = "vault"\nprefix = "theirs"\n'),
                   PRE_ID + "\n[pki]\ncommit = false\n"):
        assert not is_id_edit(PRE_ID, forged), forged
    given = with_pki_id(PRE_ID, OURS)
    assert not is_id_edit(given, with_pki_id(given, THEIRS))  # an id is never replaced
