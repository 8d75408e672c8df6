"""The ``vault`` backend: keys in HashiCorp Vault or OpenBao.

```toml
[backend.vault]
plugin = "vault"
address = "https://vault.example:8200"  # default $VAULT_ADDR; if both are set they must agree
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
policy for the token of an apply pipeline, ``pki-plan.hcl`` a read-only one for plan jobs.

How the store logs in (``auth``: a token, AppRole, JWT/OIDC, Kubernetes) is in `pkiascode_vault.auth`;
where credentials may go, in `pkiascode_vault.client`.

This module stays cheap to import: hvac and requests load only when a store first talks to Vault.
"""

from __future__ import annotations

from typing import Any

from pkiascode.hookspecs import hookimpl

from .store import VaultKeyStore

__all__ = ["VaultKeyStore", "POLICY_FILE", "PLAN_POLICY_FILE"]

#: the least-privilege policy for an apply pipeline's token, with default mounts and prefix
POLICY_FILE = __file__.rsplit("/", 1)[0] + "/pki-apply.hcl"
#: the read-only policy for a plan job's token
PLAN_POLICY_FILE = __file__.rsplit("/", 1)[0] + "/pki-plan.hcl"


@hookimpl
def pki_register_backends(register: Any) -> None:
    register("vault", VaultKeyStore)
