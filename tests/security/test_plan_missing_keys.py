"""Threat: a key missing from its store silently replaced a root (issue 11: "with the local store in
a fresh clone, `pki plan` proposed a new root key and apply did it, reissuing everything"; the
README's one-line move to Vault showed `rekey`, not `move_key`, in the pull-request job).

A key missing from its store is a plan error naming the object and where the key was expected,
unless the user asks for a new one (``--replace NAME``, ``--rekey-missing``). A key that is to move
to another store is shown as ``move_key`` ("needs the machine that holds <store>") and apply on a
machine without it refuses in one line. Real git repositories: an origin and fresh clones.
"""

from __future__ import annotations

import json

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    SMALL_PKI, Pki, assert_one_line, assert_state_sound, clean_env, commit_all, commit_count, edit_toml, git,
    inventory, new_repo, tree_snapshot,
)

NAMES = ["root", "inter", "server", "client"]


def _clone(origin: Path, where: Path) -> Path:
    git(origin.parent, "clone", "-q", str(origin), str(where))
    return where


@pytest.fixture
def origin(make_applied) -> Path:
    return make_applied(name="origin")[0]


def test_a_fresh_clone_without_the_local_keys_plans_an_error_not_a_new_root(origin, tmp_path):
    clone = _clone(origin, tmp_path / "clone")
    assert not (clone / ".pki").exists()
    pki = Pki(clone)
    state, commits = tree_snapshot(clone / "state"), commit_count(clone)
    root_ref = inventory(clone)["root"]["key"]["ref"]

    r = pki("plan", expect=1)
    message = assert_one_line(r.stderr.strip())
    assert message.startswith(f"Error: authority.root: its key {root_ref} is missing from backend local "
                              "(.pki/keys) (and 3 more missing keys): "), message
    assert "--rekey-missing" in message and "--replace NAME" in message
    assert "missing" in pki("plan", "--format", "json", expect=1).stderr
    r = pki("apply", "--auto-approve", expect=1)
    assert "authority.root: its key" in assert_one_line(r.stderr.strip())
    assert tree_snapshot(clone / "state") == state and commit_count(clone) == commits
    assert not list((clone / ".pki").glob("keys/*.pem"))

    # the pull-request job's plan does not ask the key stores: nothing to do
    assert pki.plan_exit("--offline") == 0



def _trusting_the_new_audit_pin(repo: Path, pki: Pki) -> tuple[str, ...]:
    """The audit key was lost with the others and replaced without the old key's endorsement: verify
    and plan refuse the new pin until the operator trusts it by its fingerprint (here in
    $PKI_TRUST_PIN, as a pipeline's settings would hold it: never in a file of the repository)."""
    keys = json.loads((repo / "state/audit-signatures.json").read_text())["keys"]
    assert "is not endorsed" in pki("audit", "verify", expect=1).stderr
    assert f"--trust-pin {keys[-1]['fingerprint']}" in pki("plan", expect=1).stderr
    pki.env["PKI_TRUST_PIN"] = keys[-1]["fingerprint"]
    return ()


def test_rekey_missing_replaces_every_missing_key_and_converges(origin, tmp_path):
    clone = _clone(origin, tmp_path / "clone")
    pki = Pki(clone)
    data = pki.plan_json("--rekey-missing")
    # the audit key, missing too, is shown replaced (review F6: it was replaced without being shown)
    assert [(c["action"], c["name"]) for c in data["changes"]] == [("rekey", n) for n in NAMES] + [
        ("rekey_audit_key", "audit-log")]
    assert all("is missing from backend local" in " ".join(c["reasons"]) for c in data["changes"])
    assert any("audit key" in w and "is missing from backend local" in w for w in data["warnings"])
    assert data["rekey_missing"] is True
    pki.apply("--rekey-missing")
    assert_state_sound(clone, pki, exact_keys=True, audit_args=_trusting_the_new_audit_pin(clone, pki))
    # the origin's machine still holds the old keys: they are not what state names now
    assert inventory(clone)["root"]["key"]["ref"] != inventory(origin)["root"]["key"]["ref"]


def test_replace_names_the_one_key_to_replace(origin, tmp_path):
    pki = Pki(origin)
    ref = inventory(origin)["client"]["key"]["ref"]
    (origin / ".pki/keys" / ref).unlink()
    r = pki("plan", expect=1)
    assert f"certificate.client: its key {ref} is missing from backend local (.pki/keys): " in r.stderr
    data = pki.plan_json("--replace", "client")
    assert [(c["action"], c["name"]) for c in data["changes"]] == [("rekey", "client"), ("update_crl", "inter")]
    pki.apply("--replace", "client")
    assert_state_sound(origin, pki, exact_keys=True)


def test_a_saved_plan_made_with_rekey_missing_is_applied_as_made(origin, tmp_path):
    clone = _clone(origin, tmp_path / "clone")
    pki = Pki(clone)
    plan_file = tmp_path / "plan.json"
    pki.ok("plan", "--rekey-missing", "--out", str(plan_file))
    pki("apply", str(plan_file), expect=1)  # a saved plan is not authenticated: confirmed on the command line
    pki("apply", str(plan_file), "--rekey-missing", expect=0)
    assert_state_sound(clone, pki, exact_keys=True, audit_args=_trusting_the_new_audit_pin(clone, pki))


# -- the move to Vault, planned in a fresh clone ------------------------------------------------

@pytest.fixture(scope="module")
def bao() -> Iterator[object]:
    from vault.conftest import _server  # the suite's real OpenBao (tests/vault/conftest.py)

    with _server(dev=True) as server:
        yield server


def _moving_to_vault(tmp_path: Path, bao: object) -> tuple[Path, Pki, dict[str, str]]:
    """An origin whose keys are in the local store, and a commit that moves them all to Vault."""
    env = clean_env(VAULT_ADDR=bao.address, VAULT_TOKEN=bao.token)  # type: ignore[attr-defined]
    toml = f'[backend.vault]\nplugin = "vault"\nprefix = "move-{tmp_path.name[-20:]}"\n\n' + SMALL_PKI
    origin = new_repo(tmp_path / "origin", toml, commit=True)
    holder = Pki(origin, env)
    holder.apply()
    edit_toml(origin, "[defaults]\n", '[defaults]\nbackend = "vault"\n')  # the one reviewed line
    commit_all(origin, "keys to Vault")
    return origin, holder, env


@pytest.mark.vault
def test_the_move_to_vault_planned_in_a_fresh_clone_is_a_move_it_refuses_to_apply(tmp_path, bao):
    origin, _, env = _moving_to_vault(tmp_path, bao)
    clone = _clone(origin, tmp_path / "clone")
    ci = Pki(clone, env)
    data = ci.plan_json()
    assert [(c["action"], c["name"]) for c in data["changes"]] == [("move_key", n) for n in NAMES]
    for c in data["changes"]:
        assert c["reasons"][0] == "backend changes local → vault"
        assert c["reasons"][1].startswith("needs the machine that holds backend local: its key ")
        assert c["key_elsewhere"] == "local"
    assert "needs the machine that holds backend local" in ci.ok("plan", "--format", "markdown").stdout

    state, commits = tree_snapshot(clone / "state"), commit_count(clone)
    r = ci("apply", "--auto-approve", expect=1)
    assert assert_one_line(r.stderr.strip()) == (
        "Error: authority.root: its key moves from backend local, which does not hold it on this machine "
        "(and 3 more): apply on the machine that holds backend local")
    assert tree_snapshot(clone / "state") == state and commit_count(clone) == commits


@pytest.mark.vault
def test_the_machine_that_holds_the_keys_moves_them_to_vault(tmp_path, bao):
    origin, holder, _ = _moving_to_vault(tmp_path, bao)
    moved = holder.plan_json()
    assert [(c["action"], c["name"], c["reasons"]) for c in moved["changes"]] == [
        ("move_key", n, ["backend changes local → vault"]) for n in NAMES]
    holder.apply()
    assert {rec["key"]["backend"] for rec in inventory(origin).values()} == {"vault"}
    assert holder.plan_exit() == 0
