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
    """A pull request lists the root's key for deletion, the inventory otherwise intact: plan refuses
    (a key in use is never pending deletion), and nothing is deleted."""
    repo, pki = applied
    real = key_ref(repo, "root")
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    _edit_inventory(repo, real, [["local", real]])
    r = pki("apply", "--auto-approve", expect=1)
    assert f"authority.root: state/inventory.json lists its key local:{real} for deletion" in r.stderr
    assert (repo / ".pki/keys" / real).exists(), "the root CA's key was deleted"


def test_a_key_no_apply_retired_is_kept(applied):
    """A key in the store that no object uses (another PKI's, in a shared store; here a stray file)
    listed for deletion by a pull request: the plan warns, apply keeps it, since no apply retired it
    (the signed audit log records each retirement)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    repo, pki = applied
    real = key_ref(repo, "root")
    stray = repo / ".pki/keys/stray-0badc0de.pem"
    stray.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    stray.chmod(0o600)
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    _edit_inventory(repo, real, [["local", stray.name]])
    note = f"lists key {stray.name} (backend local) for deletion, but state/audit.jsonl does not record that an " \
        "apply retired it"
    assert note in pki("plan").stdout
    r = pki.apply()
    assert stray.exists(), "a key no apply retired was deleted"
    assert note in r.stderr


def test_a_reference_to_the_audit_key_is_refused(applied):
    """The root's reference names the audit log's key (which the store holds, so no key looks
    missing) and the real root key is listed for deletion: plan refuses, as a pin naming an
    object's key is refused, and nothing is deleted."""
    repo, pki = applied
    real = key_ref(repo, "root")
    (audit_key,) = audit_key_refs(repo)
    edit_toml(repo, 'common_name = "client-1"', 'common_name = "client-2"')
    _edit_inventory(repo, audit_key, [["local", real]])
    r = pki("apply", "--auto-approve", expect=1)
    assert "the audit key is no object's key" in r.stderr
    assert (repo / ".pki/keys" / real).exists(), "the root CA's key was deleted"
