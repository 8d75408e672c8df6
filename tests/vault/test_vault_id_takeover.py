"""Threat: a merged pull request on a repository from before ``[pki] id`` reaches another PKI's keys on
the same Vault and prefix (review findings F-F and F-G), against a real OpenBao.

- F-F: the pull request gives B (no id yet) A's id, with ``legacy_keys = true`` (what apply itself
  would write): B's inventory records no id yet, so nothing compared it with anything, and
  ``pki prune`` in B deleted A's keys as orphans. Now an id becomes B's only when an apply records it
  in the inventory after checking that its namespace holds no key B's state does not name; until
  then ``pki keys``/``pki prune`` refuse, and a pull request that writes the id into the inventory
  itself is caught the same way, also under later commits: the id is B's only once B's signed audit
  log records it (each line an apply writes carries the id it records).
- F-G: the pull request lists A's key (unscoped, reachable with ``legacy_keys``) in B's
  ``pending_deletes``, in one commit or in two merged by fast-forward (the first naming it as an
  object's key): a pending deletion is carried out only when B's signed audit log records that an
  apply retired the key.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from helpers import Pki, assert_one_line, clean_env, commit_all, edit_toml, git, inventory, new_repo

pytestmark = pytest.mark.vault

A_ID = "victimaaaa01"
TOML = ('[backend.vault]\nplugin = "vault"\nprefix = "{prefix}"\n\n[defaults]\nbackend = "vault"\n'
        'key = "ecdsa-p256"\nvalidity = "90d"\n\n[authority.root]\ncommon_name = "Root {name}"\nvalidity = "10y"\n\n'
        '[certificate.web]\nissuer = "root"\ncommon_name = "web"\nhosts = ["web.example"]\n')


def _exists(server, ref: str) -> bool:
    kind, _, rest = ref.partition(":")
    if kind == "transit":
        return server.api("GET", f"transit/keys/{rest.rpartition('@')[0]}", ok=False)[0] == 200
    return server.api("GET", f"secret/data/{rest}", ok=False)[0] == 200


def _pki_a(tmp_path: Path, prefix: str, env: dict[str, str], pki_id: str | None) -> tuple[Path, Pki]:
    """PKI A, applied: with ``pki_id``, or made as a version without ids made it (none recorded)."""
    text = TOML.format(prefix=prefix, name="A")
    repo = new_repo(tmp_path / "a", (f'[pki]\nid = "{pki_id}"\n\n' if pki_id else "") + text, commit=True)
    return repo, _applied(repo, env, pre_id=pki_id is None)


def _applied(repo: Path, env: dict[str, str], *, pre_id: bool) -> Pki:
    pki = Pki(repo, env)
    if pre_id:
        (repo / "pki.toml").write_text((repo / "pki.toml").read_text() + "# edited\n")  # (not HEAD's: no id added)
    pki.apply()
    if pre_id:
        commit_all(repo, "pki.toml (as a version without ids left it)")
    assert ("pki_id" in json.loads((repo / "state/inventory.json").read_text())) is not pre_id
    return pki


def _pre_id_b(tmp_path: Path, prefix: str, env: dict[str, str]) -> tuple[Path, Pki]:
    repo = new_repo(tmp_path / "b", TOML.format(prefix=prefix, name="B"), commit=True)
    return repo, _applied(repo, env, pre_id=True)


def _a_intact(server, repo_a: Path, pki_a: Pki, refs: set[str]) -> None:
    assert all(_exists(server, ref) for ref in refs), refs
    assert pki_a.plan_exit("--detailed-exitcode") == 0


def _refused_as_taken(pki_b: Pki) -> None:
    """keys, prune and apply of B each refuse, in one line, an id whose namespace holds A's 3 keys."""
    for args in (["keys"], ["prune", "--auto-approve"], ["apply", "--auto-approve"]):
        r = pki_b(*args, expect=1)
        assert "Deleted" not in r.stdout, r
        assert "already holds 3 key(s) that state/ does not name" in assert_one_line(r.stderr.strip()), r


def test_another_pkis_id_given_by_a_pull_request_is_refused_and_deletes_nothing(tmp_path, vault_env):
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    prefix = f"take{secrets.token_hex(4)}"
    repo_a, pki_a = _pki_a(tmp_path, prefix, env, A_ID)
    a_keys = {o["key"]["ref"] for o in inventory(repo_a).values()}
    repo_b, pki_b = _pre_id_b(tmp_path, prefix, env)

    # the pull request: A's id, legacy_keys for B's keys made before ids (merged)
    edit_toml(repo_b, 'plugin = "vault"\n', 'plugin = "vault"\nlegacy_keys = true\n')
    (repo_b / "pki.toml").write_text(f'[pki]\nid = "{A_ID}"\n\n' + (repo_b / "pki.toml").read_text())
    commit_all(repo_b, "a pull request: add [pki] id")
    for args in (["keys"], ["prune", "--auto-approve"]):
        r = pki_b(*args, expect=1)
        assert "Deleted" not in r.stdout and "orphan" not in r.stdout, r
        assert f"does not record the [pki] id {A_ID} yet" in assert_one_line(r.stderr.strip()), r
    before = git(repo_b, "rev-parse", "HEAD")
    for args in (["plan"], ["apply", "--auto-approve"]):  # (the pull request's plan job fails already)
        r = pki_b(*args, expect=1)
        line = assert_one_line(r.stderr.strip())
        assert f"the [pki] id {A_ID} is new to state/inventory.json, but its namespace in backend vault" in line, r
    assert git(repo_b, "rev-parse", "HEAD") == before
    _a_intact(vault_env, repo_a, pki_a, a_keys)

    # the same pull request writes the id into B's inventory too: B's audit log does not record it
    path = repo_b / "state/inventory.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pki_id": A_ID}, indent=2, sort_keys=True) + "\n")
    commit_all(repo_b, "a pull request: record the id too")
    _refused_as_taken(pki_b)
    _a_intact(vault_env, repo_a, pki_a, a_keys)

    # a commit lands on top (a rebase or fast-forward merge of more commits): HEAD and its first parent
    # both record the id now, but B's audit log does not, and only an apply writes that
    (repo_b / "NOTES.md").write_text("unrelated\n")
    commit_all(repo_b, "an unrelated commit")
    _refused_as_taken(pki_b)
    _a_intact(vault_env, repo_a, pki_a, a_keys)


def test_a_pending_deletion_of_another_pkis_key_is_never_carried_out(tmp_path, vault_env):
    env = clean_env(VAULT_ADDR=vault_env.address, VAULT_TOKEN=vault_env.token)
    prefix = f"pend{secrets.token_hex(4)}"
    repo_a, pki_a = _pki_a(tmp_path, prefix, env, None)
    a_root = inventory(repo_a)["root"]["key"]["ref"]
    repo_b, pki_b = _pre_id_b(tmp_path, prefix, env)
    edit_toml(repo_b, 'validity = "90d"', 'validity = "60d"')  # a change: its apply gives B an id, legacy_keys
    commit_all(repo_b, "shorter validity")
    pki_b.apply()
    assert "legacy_keys = true" in (repo_b / "pki.toml").read_text()

    path = repo_b / "state/inventory.json"
    inv = json.loads(path.read_text())
    path.write_text(json.dumps({**inv, "pending_deletes": [["vault", a_root]]}, indent=2, sort_keys=True) + "\n")
    commit_all(repo_b, "a pull request: A's root key listed for deletion")
    note = (f"lists key {a_root} (backend vault) for deletion, but state/audit.jsonl does not record that an "
            "apply retired it")
    assert note in pki_b.ok("plan", "--format", "markdown").stdout  # the reviewer sees it
    saved = tmp_path / "plan.json"
    pki_b.ok("plan", "--out", str(saved))
    assert any(note in w for w in json.loads(saved.read_text())["warnings"])
    r = pki_b.apply(str(saved))  # (the saved plan's note is the plan's own, not a change)
    assert note in r.stderr
    assert _exists(vault_env, a_root), "A's root key was deleted"

    # the same in two commits merged by fast-forward: the first names A's key as an object's (so the
    # inventory's first-parent history would show it "used"), the second retires it
    inv = json.loads(path.read_text())
    own = inv["objects"]["web"]["key"]["ref"]
    inv["objects"]["web"]["key"]["ref"], inv["pending_deletes"] = a_root, []
    path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    commit_all(repo_b, "a pull request, commit 1: A's key as web's")
    inv["objects"]["web"]["key"]["ref"], inv["pending_deletes"] = own, [["vault", a_root]]
    path.write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")
    commit_all(repo_b, "a pull request, commit 2: web's old key retired")
    r = pki_b.apply()
    assert note in r.stderr
    assert _exists(vault_env, a_root), "A's root key was deleted"
    assert pki_a.plan_exit("--detailed-exitcode") == 0
