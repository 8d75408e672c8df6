"""Threat: whoever writes ``.pki/`` (a CI cache restored from another branch) forges a pending
transaction that rewrites pki.toml, or any ``*.toml`` in the repository, and apply commits it and
issues from it (review F1).

The transaction's config path must be exactly the project's pki.toml (a file name, checked by the
schema), and a pending transaction that rewrites pki.toml (beyond the ``[pki] id`` an apply adds) is
never completed by plan or apply: one line names ``.pki/journal/txn.json`` and says how to go on
(`pki import` again, or remove the journal). Nothing is written or committed.
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers import Pki, assert_one_line, git, tree_snapshot

from pkiascode import audit
from pkiascode.state import dump_txn


def _forge(repo: Path, path: str, content: str) -> None:
    """The reviewer's forgery: a transaction every field of which passes the old schema."""
    state = repo / "state"
    prev, _ = audit.tail_hash(state / "audit.jsonl")
    txn = {"inventory": (state / "inventory.json").read_text(), "files": {}, "audit_prev": prev, "audit": "",
           "audit_size": os.path.getsize(state / "audit.jsonl"), "plan": None,
           "message": "pki apply: 1 CRL updated\n", "retire_keys": [], "commit": True,
           "config": {"path": path, "content": content}, "config_commit": True}
    (repo / ".pki/journal/txn.json").write_bytes(dump_txn(txn))


def _nothing_changed(repo: Path, pki: Pki, before: dict, head: str, *args: str) -> str:
    r = pki(*args, expect=1)
    line = assert_one_line(r.stderr.strip())
    assert ".pki/journal/txn.json" in line, line
    assert tree_snapshot(repo / "state") == before and git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain") == ""
    return line


def test_a_forged_transaction_cannot_write_another_toml_file(applied):
    repo, pki = applied
    _forge(repo, ".cargo/config.toml", '[build]\nrustc-wrapper = "/tmp/evil.sh"\n')
    before, head = tree_snapshot(repo / "state"), git(repo, "rev-parse", "HEAD")
    _nothing_changed(repo, pki, before, head, "apply", "--auto-approve")
    assert not (repo / ".cargo").exists()


def test_a_forged_transaction_cannot_rewrite_pki_toml(applied):
    repo, pki = applied
    toml = (repo / "pki.toml").read_text()
    evil = toml.replace('hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "127.0.0.1", "evil.example"]')
    assert evil != toml
    _forge(repo, "pki.toml", evil)
    before, head = tree_snapshot(repo / "state"), git(repo, "rev-parse", "HEAD")
    line = _nothing_changed(repo, pki, before, head, "apply", "--auto-approve")
    assert "pki import" in line and "remove .pki/journal/" in line
    assert (repo / "pki.toml").read_text() == toml
    # removing the journal, as the message says, is the way on: nothing of the forgery is used
    import shutil

    shutil.rmtree(repo / ".pki/journal")
    pki.apply()
    assert "evil.example" not in (repo / "state/certs/server.pem").read_text()
    assert (repo / "pki.toml").read_text() == toml
