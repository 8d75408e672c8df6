"""Threat: a committed state edit makes apply delete a key a certificate still needs (review F5).

A pull request points the root's key reference elsewhere and lists the real root key in
``pending_deletes``. Apply deletes retired keys only after the plan was made (state verified), and
never a key whose public key is that of a certificate in state.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import audit_key_refs, commit_all, edit_toml, key_ref


def _edit_inventory(repo: Path, root_ref: str, pending: list[list[str]]) -> None:
    path = repo / "state/inventory.json"
    inv = json.loads(path.read_text())
    inv["objects"]["root"]["key"]["ref"] = root_ref
    inv["pending_deletes"] = pending
    path.write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")
    commit_all(repo, "a pull request")


def test_a_root_key_listed_for_deletion_behind_a_broken_reference_is_kept(applied):
    repo, pki = applied
    real = key_ref(repo, "root")
    _edit_inventory(repo, "root-00000000.noexport.pem", [["local", real]])
    r = pki("apply", "--auto-approve", expect=1)
    assert "root" in r.stderr
    assert (repo / ".pki/keys" / real).exists(), "the root CA's key was deleted"


def test_a_key_of_a_certificate_in_state_is_never_deleted(applied):
    """The plan passes (the root's reference names the audit log's key, which no object uses, and
    the root does not sign in this run): the deletion refuses the certificate's key, since no apply
    retired it (the signed audit log records each retirement)."""
    repo, pki = applied
    real = key_ref(repo, "root")
    (audit_key,) = audit_key_refs(repo)
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    _edit_inventory(repo, audit_key, [["local", real]])
    r = pki.apply()
    assert (repo / ".pki/keys" / real).exists(), "the root CA's key was deleted"
    assert f"lists key {real} (backend local) for deletion, but state/audit.jsonl does not record that an apply " \
        "retired it" in r.stderr
