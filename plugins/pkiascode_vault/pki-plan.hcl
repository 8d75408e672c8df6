# pkiascode: read-only policy for the token `pki plan` and `pki keys` run with (a pull-request job).
#
# Same defaults and the same two forms (with and without a `[pki] id`) as pki-apply.hcl. It can see
# which keys exist and read their public halves, and nothing else: no key material (no read on
# secret/data), no signing, no writes, no lock.
#
#   vault policy write pki-plan pki-plan.hcl

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "sys/internal/ui/mounts/secret" {
  capabilities = ["read"]
}
path "sys/internal/ui/mounts/transit" {
  capabilities = ["read"]
}

# which Transit keys exist, and their public halves and versions
path "transit/keys" {
  capabilities = ["list"]
}
path "transit/keys/pki-*" {
  capabilities = ["read"]
}
path "transit/keys/pki.*" {
  capabilities = ["read"]
}

# which KV keys exist (names only: LIST on metadata returns no secret)
path "secret/metadata/pki/keys/*" {
  capabilities = ["list"]
}
path "secret/metadata/pki/+/keys/*" {
  capabilities = ["list"]
}
