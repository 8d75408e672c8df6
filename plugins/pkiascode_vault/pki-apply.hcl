# pkiascode: least-privilege policy for the token `pki apply` runs with (and `pki export`, `pki prune`).
#
# Written for the default settings of [backend.<name>] with plugin = "vault":
#   kv_mount = "secret", transit_mount = "transit", prefix = "pki".
# With other settings, replace "secret/", "transit/", "pki/", "pki-" and "pki." below accordingly.
# Each rule comes twice: for a PKI with a `[pki] id` (paths pki/<id>/..., Transit names pki.<id>.*)
# and for one without (pki/keys/..., pki-*).
#
# This policy covers EVERY PKI on the Vault: a token with it can delete any PKI's keys. On a Vault
# that several PKIs share, give each PKI's apply pipeline pki-apply-scoped.hcl instead, rendered for
# its [pki] id (sed "s/PKI_ID/<id>/g", or pkiascode_vault.scoped_policy): pkiascode itself refuses a
# key reference outside the PKI's namespace, and that policy makes Vault refuse it as well.
#
#   vault policy write pki-apply pki-apply.hcl
#   vault token create -policy=pki-apply -ttl=1h      # or bind it to your CI's auth role (README)
#
# Works the same with OpenBao (`bao policy write ...`). pki-plan.hcl is the read-only counterpart.

# --- the token checks itself (`pki apply` runs this before changing anything) -------------------
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# is the mount there, and of the right kind (KV v2, Transit)?
path "sys/internal/ui/mounts/secret" {
  capabilities = ["read"]
}
path "sys/internal/ui/mounts/transit" {
  capabilities = ["read"]
}

# --- Transit: authority keys, created non-exportable; signing happens inside Vault ---------------
# Create (or BYOK-import, for a key moved in from another store) keys named pki-* / pki.<id>.*, and
# read their public halves. Transit needs "update" to create a key; "delete" (with "update" on
# .../config to set deletion_allowed) lets pkiascode remove a key it retired. Drop "delete" to make
# deleting authority keys impossible for the pipeline. There is no grant on transit/export or
# transit/backup anywhere: even a key whose config were changed could not be read out with this token.
path "transit/keys/pki-*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "transit/keys/pki.*" {
  capabilities = ["create", "read", "update", "delete"]
}

# `pki plan` asks which keys still exist with a single LIST.
path "transit/keys" {
  capabilities = ["list"]
}

# the wrapping key for BYOK imports (moving an existing key into Transit)
path "transit/wrapping_key" {
  capabilities = ["read"]
}

# sign certificates and CRLs (always with the key version pinned in the inventory)
path "transit/sign/pki-*" {
  capabilities = ["update"]
}
path "transit/sign/pki.*" {
  capabilities = ["update"]
}

# --- KV v2: leaf keys, written once; `pki export` and services read them ---------------------
# "create" but not "update": a key is written once and can never be overwritten by this token.
path "secret/data/pki/keys/*" {
  capabilities = ["create", "read"]
}
path "secret/data/pki/+/keys/*" {
  capabilities = ["create", "read"]
}

# LIST to find missing keys in one call; delete removes a key that a move or removal retired.
path "secret/metadata/pki/keys/*" {
  capabilities = ["list", "delete"]
}
path "secret/metadata/pki/+/keys/*" {
  capabilities = ["list", "delete"]
}

# --- the apply lock: one lease record per state, held and released by check-and-set writes -------
path "secret/data/pki/locks/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/pki/+/locks/*" {
  capabilities = ["create", "read", "update"]
}
