"""GitOps apply (issue 11) with real git: a bare origin, clones of it, the local key store.

- a plain apply keeps the keys its commit retired until that commit is on the upstream; a later run
  deletes them once it is (11.1);
- ``pki apply --push``: a rejected push (a pre-receive hook) is undone completely; a clone whose
  HEAD is behind the upstream is refused; an apply killed between its commit and its push is pushed
  by the next one (11.2);
- ``pki keys`` and ``pki prune`` (11.3);
- the audit actor and the commit trailers from GitHub Actions and GitLab CI variables (11.7).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, git, key_files, key_ref, new_repo, tree_snapshot

pytestmark = pytest.mark.usefixtures("openssl_and_git")

REJECT = "#!/bin/sh\necho 'pushes are closed today' >&2\nexit 1\n"


def _origin(tmp_path: Path, env: dict[str, str]) -> Path:
    """A bare origin whose main holds SMALL_PKI's pki.toml and .gitignore (nothing applied)."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = new_repo(tmp_path / "seed", SMALL_PKI, commit=True)
    git(seed, "push", "-q", str(origin), "HEAD:refs/heads/main")
    return origin


def _clone(tmp_path: Path, origin: Path, name: str, env: dict[str, str]) -> tuple[Path, Pki]:
    directory = tmp_path / name
    git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(directory))
    return directory, Pki(directory, env)


def _hook(origin: Path, script: str | None) -> None:
    hook = origin / "hooks" / "pre-receive"
    if script is None:
        hook.unlink(missing_ok=True)
        return
    hook.write_text(script)
    hook.chmod(0o755)


def _tip(origin: Path) -> str:
    return git(origin, "rev-parse", "refs/heads/main").strip()


def _pending(directory: Path) -> list[list[str]]:
    return json.loads((directory / "state" / "inventory.json").read_text()).get("pending_deletes", [])


def _key_file(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


@pytest.fixture
def origin(tmp_path: Path, env: dict[str, str]) -> Path:
    return _origin(tmp_path, env)


def test_a_plain_apply_keeps_retired_keys_until_its_commit_is_on_the_upstream(tmp_path, env, origin):
    a, pki = _clone(tmp_path, origin, "a", env)
    pki.apply("--auto-approve")
    git(a, "push", "-q")
    old = key_ref(a, "server")
    pki.apply("--auto-approve", "--replace", "server")
    new = key_ref(a, "server")
    assert new != old
    # the commit records the retired key; the key stays: origin/main's state still names it
    assert [p[1] for p in _pending(a)] == [old]
    assert _key_file(old) in key_files(a)
    assert git(a, "status", "--porcelain").strip() == ""
    # its push fails: no key of the remote's state is deleted, however often apply runs
    _hook(origin, REJECT)
    tip = _tip(origin)
    git(a, "push", "-q", check=False)
    assert _tip(origin) == tip != git(a, "rev-parse", "HEAD").strip()
    pki.apply("--auto-approve")
    assert _key_file(old) in key_files(a)
    remote_refs = {o["key"]["ref"] for o in json.loads(git(a, "show", "origin/main:state/inventory.json"))["objects"].values()}
    assert old in remote_refs and all(_key_file(r) in key_files(a) for r in remote_refs)
    # once the commit lands, the next run deletes it
    _hook(origin, None)
    git(a, "push", "-q")
    pki.apply("--auto-approve")
    assert _key_file(old) not in key_files(a)
    assert _key_file(new) in key_files(a)
    assert pki.plan_exit("--detailed-exitcode") == 0


def test_a_push_rejected_by_the_remote_is_undone_completely(tmp_path, env, origin):
    a, pki = _clone(tmp_path, origin, "a", env)
    pki.apply("--push", "--auto-approve")
    assert git(a, "rev-parse", "HEAD").strip() == _tip(origin)
    head, tip = git(a, "rev-parse", "HEAD").strip(), _tip(origin)
    keys, state = key_files(a), tree_snapshot(a / "state")
    old = key_ref(a, "server")

    _hook(origin, REJECT)
    r = pki("apply", "--push", "--auto-approve", "--replace", "server")
    assert r.returncode == 1, r
    assert "pushes are closed today" in r.stderr and "another apply landed first" in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1, r
    # nothing is left behind: the branch, state/, the index and the key store are as they were
    assert git(a, "rev-parse", "HEAD").strip() == head and _tip(origin) == tip
    assert git(a, "status", "--porcelain", "--untracked-files=all").strip() == ""
    assert tree_snapshot(a / "state") == state
    assert key_files(a) == keys
    assert pki.plan_exit("--detailed-exitcode") == 0

    _hook(origin, None)
    r = pki.apply("--push", "--auto-approve", "--replace", "server")
    assert "Pushed" in r.stdout
    assert git(a, "rev-parse", "HEAD").strip() == _tip(origin) != tip
    assert _key_file(old) not in key_files(a)  # retired, and its commit is on origin/main
    assert _key_file(key_ref(a, "server")) in key_files(a)


def test_a_clone_behind_the_upstream_is_refused_and_changes_nothing(tmp_path, env, origin):
    a, pki_a = _clone(tmp_path, origin, "a", env)
    b, pki_b = _clone(tmp_path, origin, "b", env)
    pki_a.apply("--push", "--auto-approve")
    head = git(b, "rev-parse", "HEAD").strip()
    r = pki_b("apply", "--push", "--auto-approve")
    assert r.returncode == 1 and "state is behind origin/main: re-plan on the new tip" in r.stderr, r
    assert git(b, "rev-parse", "HEAD").strip() == head
    assert git(b, "status", "--porcelain", "--untracked-files=all").strip() == ""
    assert key_files(b) == set()


def test_a_detached_head_pushes_with_push_to(tmp_path, env, origin):
    a, pki = _clone(tmp_path, origin, "a", env)
    git(a, "checkout", "-q", "--detach")
    r = pki("apply", "--push", "--auto-approve")
    assert r.returncode == 1 and "--push-to" in r.stderr, r
    r = pki("apply", "--push", "--push-to", "nowhere/main", "--auto-approve")
    assert r.returncode == 1 and "configured remote" in r.stderr, r
    pki.apply("--push", "--push-to", "origin/main", "--auto-approve")
    assert git(a, "rev-parse", "HEAD").strip() == _tip(origin)


def test_killed_between_commit_and_push_the_remote_is_untouched_and_the_next_run_pushes(tmp_path, env, origin):
    a, pki = _clone(tmp_path, origin, "a", env)
    pki.apply("--push", "--auto-approve")
    tip = _tip(origin)
    old = key_ref(a, "server")
    r = pki("apply", "--push", "--auto-approve", "--replace", "server", env={"PKI_TEST_CRASH_AT": "after-commit"})
    assert r.returncode == 137, r
    assert _tip(origin) == tip  # the remote never saw it
    assert _key_file(old) in key_files(a)  # the remote's state names it
    # a fresh clone of the remote: its state, every key it names here
    remote = json.loads(git(a, "show", "origin/main:state/inventory.json"))
    assert all(_key_file(o["key"]["ref"]) in key_files(a) for o in remote["objects"].values())
    # the next run completes the apply and pushes it
    r = pki.apply("--push", "--auto-approve")
    assert "were not pushed" in r.stderr and "Pushed" in r.stdout, r
    assert git(a, "rev-parse", "HEAD").strip() == _tip(origin) != tip
    assert key_ref(a, "server") != old and _key_file(old) not in key_files(a)
    assert pki.plan_exit("--detailed-exitcode") == 0


def test_keys_and_prune(tmp_path, env, origin):
    a, pki = _clone(tmp_path, origin, "a", env)
    pki.apply("--push", "--auto-approve")
    rows = json.loads(pki.ok("keys", "--format", "json").stdout)
    assert {r["entry"] for r in rows} == {"authority.root", "authority.inter", "certificate.server",
                                          "certificate.client", "the audit log"}
    assert {r["status"] for r in rows} == {"in use"}
    old = key_ref(a, "server")
    pki.apply("--auto-approve", "--replace", "server")  # committed, not pushed: the old key waits
    rows = {r["key"]: r for r in json.loads(pki.ok("keys", "--format", "json").stdout)}
    assert rows[old]["status"] == "pending deletion" and rows[old]["entry"] is None
    # an orphan: a key no state names (left by a run whose apply was undone by hand)
    orphan = a / ".pki" / "keys" / "stray-0123abcd.pem"
    orphan.write_bytes((a / ".pki" / "keys" / _key_file(key_ref(a, "client"))).read_bytes())
    orphan.chmod(0o600)
    listed = {r["key"]: r["status"] for r in json.loads(pki.ok("keys", "--format", "json").stdout)}
    assert listed.get("stray-0123abcd.pem") == "orphan", listed
    assert "orphan" in pki.ok("keys").stdout
    # prune refuses while HEAD is not origin/main's tip
    r = pki("prune", "--auto-approve")
    assert r.returncode == 1 and "HEAD is not the tip of origin/main" in r.stderr, r
    assert orphan.exists()
    git(a, "push", "-q")
    r = pki.ok("prune", "--auto-approve")
    assert "stray-0123abcd.pem" in r.stdout and "Deleted 1 orphan key(s)" in r.stdout, r
    assert not orphan.exists()
    assert _key_file(old) in key_files(a)  # pending deletion is not an orphan
    assert pki.ok("prune", "--auto-approve").stdout.strip() == "No orphan keys."
    # without a terminal and without --auto-approve: refused
    r = pki("prune")
    assert r.returncode == 1 and "--auto-approve" in r.stderr


@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_the_actor_and_trailers_come_from_the_pipeline(tmp_path, env, origin, ci):
    a, pki = _clone(tmp_path, origin, "a", env)
    if ci == "github":
        extra = {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "octocat", "GITHUB_REPOSITORY": "acme/pki",
                 "GITHUB_SERVER_URL": "https://github.example", "GITHUB_RUN_ID": "4242"}
        login, url = "octocat", "https://github.example/acme/pki/actions/runs/4242"
    else:
        extra = {"GITLAB_CI": "true", "GITLAB_USER_LOGIN": "alice", "CI_JOB_URL": "https://gitlab.example/acme/pki/-/jobs/7"}
        login, url = "alice", "https://gitlab.example/acme/pki/-/jobs/7"
    pki.apply("--push", "--auto-approve", env=extra)
    lines = [json.loads(line) for line in (a / "state" / "audit.jsonl").read_text().splitlines()]
    assert lines and all(line["actor"] == f"{login} ({url})" for line in lines)
    trailers = dict(t.split(": ", 1) for t in
                    git(a, "log", "-1", "--format=%(trailers:only,unfold)").strip().splitlines())
    plan = lines[0]["plan"]
    assert trailers == {"Pki-Plan": plan, "Pki-Config": git(a, "rev-parse", "HEAD:pki.toml").strip(),
                        "Pki-Actor": login, "Pki-Run": url}
    # without a pipeline: PKI_ACTOR
    pki.apply("--auto-approve", "--replace", "client")
    assert json.loads((a / "state" / "audit.jsonl").read_text().splitlines()[-1])["actor"] == env["PKI_ACTOR"]
    assert f"Pki-Actor: {env['PKI_ACTOR']}" in git(a, "log", "-1", "--format=%B")


@pytest.mark.parametrize("forged", [[["files", "../../etc/passwd"]], [["no such/store", "k"]], [["files"]], "x"])
def test_a_forged_pending_deletion_is_an_error_naming_the_inventory(tmp_path, env, origin, forged):
    a, pki = _clone(tmp_path, origin, "a", env)
    pki.apply("--push")
    path = a / "state" / "inventory.json"
    inv = json.loads(path.read_text())
    inv["pending_deletes"] = forged
    path.write_text(json.dumps(inv))
    keys = key_files(a)
    r = pki("apply", "--auto-approve")
    assert r.returncode == 1 and "state/inventory.json: pending_deletes must be a list of [backend, key] pairs" in r.stderr, r
    assert key_files(a) == keys


def test_the_next_apply_gives_a_pki_toml_with_a_shared_store_its_id(tmp_path, env):
    """A pki.toml without [pki] id that defines a store other repositories may share: the next apply
    adds a random id (a note in the plan), keeping comments, in its own commit; later applies keep it."""
    toml = ("# the PKI of the test\n[backend.shared]  # not used by any entry yet\nplugin = \"vault\"\n"
            "address = \"http://127.0.0.1:9\"\n\n" + SMALL_PKI)
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = new_repo(tmp_path / "seed", toml, commit=True)
    git(seed, "push", "-q", str(origin), "HEAD:refs/heads/main")
    a, pki = _clone(tmp_path, origin, "a", env)
    edit = "apply edits pki.toml, in its commit: a random [pki] id"
    for fmt in ("text", "markdown", "json"):  # what apply will write into pki.toml, in every format
        assert edit in pki("plan", "--format", fmt).stdout
    # a saved plan is applied only if it shows the edit
    saved = tmp_path / "plan.json"
    pki.ok("plan", "--out", str(saved))
    forged = json.loads(saved.read_text())
    forged["warnings"] = [w for w in forged["warnings"] if edit not in w]
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    r = pki("apply", str(tmp_path / "forged.json"), "--push", expect=1)
    assert "does not show the edit this apply makes to pki.toml" in r.stderr
    assert "[pki]" not in (a / "pki.toml").read_text()
    pki("apply", str(saved), "--push", expect=0)
    text = (a / "pki.toml").read_text()
    assert text.startswith(toml) and "# not used by any entry yet" in text
    added = text[len(toml):]
    assert added.startswith("\n[pki]\nid = \"") and len(added.splitlines()) == 3, added
    assert git(a, "show", "origin/main:pki.toml") == text  # committed with state/, pushed
    assert git(a, "status", "--porcelain").strip() == ""
    assert "[pki] id" not in pki("plan", "--replace", "server").stdout
    pki.apply("--push", "--replace", "server")
    assert (a / "pki.toml").read_text() == text
    # a local-only pki.toml is left alone
    (tmp_path / "local").mkdir()
    b, pki_b = _clone(tmp_path, _origin(tmp_path / "local", env), "b", env)
    pki_b.apply("--push")
    assert (b / "pki.toml").read_text() == SMALL_PKI


def test_push_refuses_a_checkout_whose_state_or_pki_toml_is_not_heads(tmp_path, env, origin):
    a, pki = _clone(tmp_path, origin, "a", env)
    pki.apply("--push")
    (a / "state" / "certs" / "stray.pem").write_text("not pkiascode's\n")
    keys, head = key_files(a), git(a, "rev-parse", "HEAD").strip()
    r = pki("apply", "--auto-approve", "--push", "--replace", "server")
    assert r.returncode == 1 and "state/certs/stray.pem differ from HEAD" in r.stderr, r
    assert key_files(a) == keys and git(a, "rev-parse", "HEAD").strip() == head
