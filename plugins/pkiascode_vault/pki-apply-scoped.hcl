# pkiascode: the apply policy confined to ONE PKI: use this one when several PKIs share a Vault.
#
# A template: replace PKI_ID by the PKI's `[pki] id` (from its pki.toml) and write one policy per PKI,
# bound to that PKI's pipeline role only:
#
#   id=$(sed -n 's/^id *= *"\(.*\)".*/\1/p' pki.toml | head -1)
#   sed "s/PKI_ID/$id/g" pki-apply-scoped.hcl | vault policy write "pki-apply-$id" -
#
# (or in Python: pkiascode_vault.scoped_policy(id, prefix=..., kv_mount=..., transit_mount=...)).
# Written for kv_mount = "secret", transit_mount = "transit", prefix = "pki"; scoped_policy rewrites
# them. A token with it can create, use and delete keys named pki.<id>.* in Transit and under
# secret/{data,metadata}/pki/<id>/keys/, and take the lock pki/<id>/locks/: nothing of another PKI.
# The only thing it sees beyond its namespace is the list of Transit key names (`pki plan` finds
# missing keys with one LIST), names only. Keys made before the PKI had an id (pki-*, pki/keys/)
# are not covered: rekey them into the namespace, or add the unscoped rules of pki-apply.hcl while
# `legacy_keys = true` (they grant every PKI without an id).
# No grant on transit/export, transit/backup, KV "update" or the lock's "delete" anywhere.

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "sys/internal/ui/mounts/secret" {
  capabilities = ["read"]
}
path "sys/internal/ui/mounts/transit" {
  capabilities = ["read"]
}

# Transit: authority keys of this PKI, created non-exportable (create needs "update"; deleting a
# retired key needs "delete" and "update" on .../config). Drop "delete" to forbid deleting them.
path "transit/keys/pki.PKI_ID.*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "transit/keys" {
  capabilities = ["list"]
}
path "transit/wrapping_key" {
  capabilities = ["read"]
}
path "transit/sign/pki.PKI_ID.*" {
  capabilities = ["update"]
}

# KV v2: leaf keys of this PKI, written once ("create", never "update")
path "secret/data/pki/PKI_ID/keys/*" {
  capabilities = ["create", "read"]
}
path "secret/metadata/pki/PKI_ID/keys/*" {
  capabilities = ["list", "delete"]
}

# the apply lock of this PKI
path "secret/data/pki/PKI_ID/locks/*" {
  capabilities = ["create", "read", "update"]
}
