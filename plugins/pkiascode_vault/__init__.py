"""The ``vault`` backend: keys in HashiCorp Vault or OpenBao.

```toml
[backend.vault]
plugin = "vault"
address = "https://vault.example:8200"  # default $VAULT_ADDR, which must be set and agree (except on loopback)
# auth = { method = "approle", role_id_env = "VAULT_ROLE_ID", secret_id_env = "VAULT_SECRET_ID" }
kv_mount = "secret"                     # KV v2: exportable (leaf) keys, and the apply lock
transit_mount = "transit"               # Transit: authority keys, non-exportable, signing inside Vault
prefix = "pki"                          # KV paths pki/keys/..., pki/locks/...; Transit names pki-...
# namespace = "team-a"                  # default $VAULT_NAMESPACE
# ca_cert = "vault-ca.pem"              # default $VAULT_CACERT; relative to pki.toml
# tls_verify = true
# lock_ttl = "300s"                     # lease of the apply lock, renewed while apply runs
# lock_timeout = "0s"                   # how long to wait for another apply's lock
```

Authority keys (and any key asked for as non-exportable) are Transit keys created with
``exportable=false``: certificates and CRLs are signed inside Vault with the key version pinned in
the reference (``transit:pki-root-3f9a1c2e@1``). Other keys are generated here and written once,
with check-and-set, to KV v2 (``kv:pki/keys/node-0-3f9a1c2e``), where ``pki export`` and the
services that need them can read them. ``pki-apply.hcl`` beside this file is a least-privilege
policy for the token of an apply pipeline, ``pki-plan.hcl`` a read-only one for plan jobs, and
``pki-apply-scoped.hcl`` (rendered by `scoped_policy`) the apply policy confined to one ``[pki] id``,
for a Vault that several PKIs share.

How the store logs in (``auth``: a token, AppRole, JWT/OIDC, Kubernetes) is in `pkiascode_vault.auth`;
where credentials may go, in `pkiascode_vault.client`.

This module stays cheap to import: hvac and requests load only when a store first talks to Vault.
"""

from __future__ import annotations

from typing import Any

from pkiascode.hookspecs import hookimpl

from .store import VaultKeyStore

__all__ = ["VaultKeyStore", "POLICY_FILE", "PLAN_POLICY_FILE", "SCOPED_POLICY_FILE", "scoped_policy"]

#: the least-privilege policy for an apply pipeline's token, with default mounts and prefix
POLICY_FILE = __file__.rsplit("/", 1)[0] + "/pki-apply.hcl"
#: the read-only policy for a plan job's token
PLAN_POLICY_FILE = __file__.rsplit("/", 1)[0] + "/pki-plan.hcl"
#: the apply policy of one PKI: a template, PKI_ID to be replaced (`scoped_policy`)
SCOPED_POLICY_FILE = __file__.rsplit("/", 1)[0] + "/pki-apply-scoped.hcl"


def scoped_policy(pki_id: str, *, prefix: str = "pki", kv_mount: str = "secret", transit_mount: str = "transit") -> str:
    """The apply policy for the PKI whose ``[pki] id`` is ``pki_id`` and only for it: its Transit keys,
    its KV keys and its lock, with the store's mounts and prefix (`SCOPED_POLICY_FILE`, rendered)."""
    from pkiascode.backend import PKI_ID

    if not PKI_ID.fullmatch(pki_id):
        raise ValueError(f"[pki] id {pki_id!r}: use 1-32 letters, digits, '-' or '_'")
    from .store import prefix_problem

    if prefix_problem(prefix):
        raise ValueError(f"prefix {prefix!r}: {prefix_problem(prefix)}")
    prefix, kv_mount, transit_mount = (v.strip("/") for v in (prefix, kv_mount, transit_mount))
    if not kv_mount or not transit_mount:
        raise ValueError("kv_mount and transit_mount must not be empty")
    text = open(SCOPED_POLICY_FILE, encoding="utf-8").read()
    body = text[text.index("\npath ") + 1:]  # the rules; the header speaks of the defaults
    for old, new in ((f'"transit/keys/pki.PKI_ID.', f'"{transit_mount}/keys/{prefix.replace("/", "-")}.{pki_id}.'),
                     (f'"transit/sign/pki.PKI_ID.', f'"{transit_mount}/sign/{prefix.replace("/", "-")}.{pki_id}.'),
                     ('"transit/', f'"{transit_mount}/'),
                     ("/pki/PKI_ID/", f"/{prefix}/{pki_id}/"),
                     ('"secret/', f'"{kv_mount}/'),
                     ("mounts/secret\"", f'mounts/{kv_mount}"'),
                     ("mounts/transit\"", f'mounts/{transit_mount}"')):
        body = body.replace(old, new)
    assert "PKI_ID" not in body
    return f"# pkiascode apply policy for the PKI {pki_id} only (prefix {prefix!r})\n" + body


@hookimpl
def pki_register_backends(register: Any) -> None:
    register("vault", VaultKeyStore)
