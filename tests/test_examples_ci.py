"""The pipelines of examples/ci/ (issue 12.6), run as their CI system would run them (tests/ci_runner.py):
every job a fresh clone of a bare origin, its shell steps in order, Vault login with a JWT the test
signs as GitHub's or GitLab's OIDC issuer would (OpenBao's jwt auth with ``jwt_validation_pubkeys``),
a real OpenBao. The scenario: a pull request that adds a certificate shows it in the plan comment;
after the merge the apply job applies and pushes; a fresh clone of the origin plans nothing; the
nightly renewal and the weekly look-ahead finish cleanly."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ci_runner import (
    EXAMPLES, FIRST_LINE, CiServer, GitHubRunner, GitLabRunner, StepFailed, github_workflows, load,
)
from helpers import (
    Pki, audit_lines, clean_env, git, inventory, jwt_login_mount, require_tool, sign_jwt, write_project,
)
from pkiascode_vault import POLICY_FILE

pytestmark = [pytest.mark.vault, pytest.mark.slow]

PKI_TOML = """\
[pki]
id = "ID"

[backend.vault]
plugin = "vault"
auth = { method = "jwt", mount = "MOUNT", role = "pki-apply", jwt_env = "VAULT_JWT" }

[defaults]
backend = "vault"
key = "ecdsa-p256"
validity = "90d"
renew_before = "10d"
subject = { O = "pkiascode CI examples" }

[authority.root]
common_name = "CI Example Root CA"
validity = "10y"
renew_before = "1y"

[authority.inter]
issuer = "root"
common_name = "CI Example Intermediate CA"
validity = "5y"
renew_before = "180d"
path_length = 0

[certificate.server]
issuer = "inter"
common_name = "server.example.test"
hosts = ["server.example.test"]
"""

API_CERT = """
[certificate.api]
issuer = "inter"
common_name = "api.example.test"
hosts = ["api.example.test", "10.0.0.7"]
"""


@pytest.fixture(scope="module")
def bao() -> Iterator[object]:
    require_tool("git")
    from vault.conftest import _server  # the suite's real OpenBao (tests/vault/conftest.py)

    with _server(dev=True) as server:
        server.api("PUT", "sys/policies/acl/pki-apply", {"policy": Path(POLICY_FILE).read_text()})
        yield server


@pytest.fixture(scope="module")
def issuer() -> rsa.RSAPrivateKey:
    """The CI system's OIDC signing key (each test's Vault mount trusts it anew)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def ci_server(issuer) -> Iterator[CiServer]:
    server = CiServer(lambda claims: sign_jwt(issuer, claims))
    yield server
    server.close()


def main_jwt(issuer, claims: dict) -> str:
    """A token such as the CI hands a job on main, for checks made outside a job."""
    now = int(time.time())
    return sign_jwt(issuer, {**claims, "iat": now, "nbf": now - 5, "exp": now + 600})


def jwt_mount(bao, issuer, *, iss: str, audience: str, user_claim: str, bound: dict[str, str]) -> str:
    """An auth/jwt mount trusting ``issuer`` as the CI's OIDC issuer, with a role pki-apply (the apply
    policy) bound to the default branch, as examples/ci/README.md sets it up."""
    return jwt_login_mount(bao, issuer, issuer=iss, audience=audience, user_claim=user_claim, bound=bound)


def make_origin(tmp_path: Path, mount: str) -> tuple[Path, Path, str]:
    """A bare origin whose main holds pki.toml (nothing applied yet), and a developer's clone."""
    pki_id = f"ci{secrets.token_hex(4)}"
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    dev = tmp_path / "dev"
    git(tmp_path, "clone", "-q", str(origin), str(dev))
    write_project(dev, PKI_TOML.replace("ID", pki_id).replace("MOUNT", mount))
    git(dev, "add", "-A")
    git(dev, "commit", "-q", "-m", "pki.toml")
    git(dev, "push", "-q", "origin", "main")
    return origin, dev, pki_id


def open_pull_request(dev: Path) -> None:
    """A developer's branch that adds certificate.api, pushed to the origin."""
    git(dev, "pull", "-q", "--ff-only", "origin", "main")
    git(dev, "checkout", "-q", "-b", "add-api")
    with open(dev / "pki.toml", "a", encoding="utf-8") as f:
        f.write(API_CERT)
    git(dev, "commit", "-q", "-am", "add certificate.api")
    git(dev, "push", "-q", "origin", "add-api")


def merge_pull_request(dev: Path) -> None:
    git(dev, "checkout", "-q", "main")
    git(dev, "merge", "-q", "--no-ff", "--no-edit", "add-api")
    git(dev, "push", "-q", "origin", "main")


def fresh_clone(tmp_path: Path, origin: Path, name: str) -> Path:
    git(tmp_path, "clone", "-q", str(origin), name)
    return tmp_path / name


GITHUB_MAIN = {"iss": "https://token.actions.githubusercontent.com", "aud": "https://github.com/example",
               "sub": "repo:example/pki:ref:refs/heads/main", "repository": "example/pki", "ref": "refs/heads/main",
               "actor": "checker"}
GITLAB_MAIN = {"iss": "https://gitlab.example.com", "sub": "project_path:example/pki:ref_type:branch:ref:main",
               "project_path": "example/pki", "ref": "main", "ref_type": "branch", "ref_protected": "true",
               "user_login": "checker"}


def assert_converged(tmp_path: Path, origin: Path, bao, name: str, jwt: str) -> Path:
    """A fresh clone of the origin plans nothing against the real Vault (every key exists: the
    plan checks the key stores, logging in with ``jwt`` as pki.toml says) and its audit log verifies."""
    clone = fresh_clone(tmp_path, origin, name)
    pki = Pki(clone, clean_env(VAULT_ADDR=bao.address, VAULT_JWT=jwt))
    result = pki("plan", "--detailed-exitcode")
    assert result.returncode == 0, result
    pki("audit", "verify", expect=0)
    return clone


def plan_comment(server: CiServer, key: str) -> str:
    notes = server.notes[key]
    assert len(notes) == 1, f"{len(notes)} comments, wanted one updated comment"
    return notes[0]["body"]


# -- GitHub Actions --------------------------------------------------------------------------------

def github_project(tmp_path: Path, bao, issuer, ci_server: CiServer) -> tuple[Path, Path, GitHubRunner]:
    """A new origin (`make_origin`) whose Vault trusts GitHub's OIDC tokens for main (`jwt_mount`),
    and a runner for its workflows: (origin, the developer's clone, runner)."""
    mount = jwt_mount(bao, issuer, iss="https://token.actions.githubusercontent.com",
                      audience="https://github.com/example", user_claim="actor",
                      bound={"repository": "example/pki", "ref": "refs/heads/main"})
    origin, dev, _ = make_origin(tmp_path, mount)
    return origin, dev, GitHubRunner(origin, tmp_path / "runner", ci_server, variables={"VAULT_ADDR": bao.address})

def test_the_github_workflows_each_trigger(tmp_path):
    """Which example starts on which event, and what each may do."""
    names = lambda event, branch="main": [p.name for p in github_workflows(event, branch)]  # noqa: E731
    assert names("pull_request") == ["pki-plan.yml"]
    assert names("push") == ["pki-apply.yml"] and names("push", "feature") == []
    assert names("schedule") == ["pki-look-ahead.yml", "pki-renew.yml"]
    plan, apply, renew = (load(EXAMPLES / "github" / f) for f in ("pki-plan.yml", "pki-apply.yml", "pki-renew.yml"))
    assert plan["permissions"] == {"contents": "read", "pull-requests": "write"} and "env" not in plan
    assert "secrets." not in (EXAMPLES / "github" / "pki-plan.yml").read_text()
    for workflow in (apply, renew):
        assert workflow["concurrency"] == {"group": "pki-apply", "cancel-in-progress": False}
        assert workflow["permissions"] == {"contents": "write", "id-token": "write"}


def test_github_pull_request_merge_apply_and_nightly(tmp_path, bao, issuer, ci_server):
    origin, dev, runner = github_project(tmp_path, bao, issuer, ci_server)
    workflow = {p.name: p for p in (EXAMPLES / "github").glob("*.yml")}

    # the first push to main applies the PKI and pushes state/
    [job] = runner.run(workflow["pki-apply.yml"], "push", actor="octo-merger")
    assert job.ran == ["actions/checkout@v4", "actions/setup-python@v5", "Install pkiascode",
                       "Git identity for the state commit", "OIDC token for Vault", "Apply and push"], job.log
    assert ci_server.token_requests == ["https://github.com/example"]
    assert git(origin, "ls-tree", "--name-only", "main", "state/").split() != []
    assert set(inventory(fresh_clone(tmp_path, origin, "after-first-apply"))) == {"root", "inter", "server"}

    # a pull request adding certificate.api: the plan comment shows it, from a job with no secrets
    open_pull_request(dev)
    [job] = runner.run(workflow["pki-plan.yml"], "pull_request", ref="add-api", base="main")
    assert job.ran == ["actions/checkout@v4", "actions/setup-python@v5", "Install pkiascode", "Plan",
                       "Comment"], job.log
    comment = plan_comment(ci_server, "github!pkiascode")
    assert comment.splitlines()[0] == FIRST_LINE and len(comment) < 65_536
    assert "certificate.api" in comment and "api.example.test" in comment and "10.0.0.7" in comment, comment
    assert "key stores not checked" in comment, comment
    assert "**Plan: 1 to create.**" in comment, comment  # and nothing else
    assert len(ci_server.token_requests) == 1  # the pull request's job asked for no token

    # the merge: the apply job applies certificate.api and pushes it
    merge_pull_request(dev)
    before = git(origin, "rev-parse", "main").strip()
    [job] = runner.run(workflow["pki-apply.yml"], "push", actor="octo-merger")
    assert job.ran[-1] == "Apply and push", job.log
    assert git(origin, "rev-parse", "main~1").strip() == before  # one state commit on top of the merge
    clone = assert_converged(tmp_path, origin, bao, "after-merge", main_jwt(issuer, GITHUB_MAIN))
    assert "api" in inventory(clone)
    assert "octo-merger" in audit_lines(clone)[-1]["actor"]  # who merged, not root@runner
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert "https://github.com/example/pki/actions/runs/" in message and "Pki-Plan:" in message, message

    # the nightly renewal: nothing is due, the apply step is skipped; the weekly look-ahead passes
    tip = git(origin, "rev-parse", "main").strip()
    [job] = runner.run(workflow["pki-renew.yml"], "schedule")
    assert job.ran[-1] == "Plan" and job.skipped == ["Apply and push"], job.log
    [job] = runner.run(workflow["pki-look-ahead.yml"], "schedule")
    assert job.ran[-1] == "What falls due within 30 days", job.log
    assert git(origin, "rev-parse", "main").strip() == tip


def test_github_nightly_applies_what_is_due_and_the_look_ahead_warns(tmp_path, bao, issuer, ci_server):
    """A change on main that no apply job applied (a cancelled run): the nightly job's plan exits 2,
    its apply step runs and pushes. A certificate due within 30 days fails the weekly look-ahead,
    naming it."""
    origin, dev, runner = github_project(tmp_path, bao, issuer, ci_server)
    github = EXAMPLES / "github"
    runner.run(github / "pki-apply.yml", "push")
    git(dev, "pull", "-q", "--ff-only", "origin", "main")
    with open(dev / "pki.toml", "a", encoding="utf-8") as f:  # renewed 10 days before its 20 days end
        f.write('\n[certificate.short]\nissuer = "inter"\ncommon_name = "short"\nvalidity = "20d"\n')
    git(dev, "commit", "-q", "-am", "a short-lived certificate")
    git(dev, "push", "-q", "origin", "main")

    [job] = runner.run(github / "pki-renew.yml", "schedule")
    assert job.ran[-2:] == ["Plan", "Apply and push"] and job.skipped == [], job.log
    clone = assert_converged(tmp_path, origin, bao, "after-nightly", main_jwt(issuer, GITHUB_MAIN))
    assert "short" in inventory(clone)
    [job] = runner.run(github / "pki-renew.yml", "schedule")
    assert job.skipped == ["Apply and push"], job.log
    with pytest.raises(StepFailed, match=r"due within 30 days: certificate\.short"):
        runner.run(github / "pki-look-ahead.yml", "schedule")


def test_an_apply_that_lost_the_race_is_re_run(tmp_path, bao, issuer, ci_server):
    """Two apply runs: while one still sets up, another merge's run applies and pushes. The first one's
    `pki apply --push` exits 1 ("state is behind"), leaving nothing behind; re-run, as the README
    says, it applies what is still to do on the new tip."""
    origin, dev, runner = github_project(tmp_path, bao, issuer, ci_server)
    apply = EXAMPLES / "github" / "pki-apply.yml"
    runner.run(apply, "push")
    git(dev, "pull", "-q", "--ff-only", "origin", "main")

    def another_merge_lands(label: str) -> None:
        if label == "Apply and push":
            open_pull_request(dev)
            merge_pull_request(dev)
            runner.run(apply, "push", actor="second-merger")

    with pytest.raises(StepFailed, match=r"(?s)step 'Apply and push' exited 1:.*state is behind origin/main"):
        runner.run(apply, "push", before_step=another_merge_lands)
    tip = git(origin, "rev-parse", "main").strip()
    clone = assert_converged(tmp_path, origin, bao, "after-race", main_jwt(issuer, GITHUB_MAIN))
    assert "api" in inventory(clone)
    [job] = runner.run(apply, "push")  # the re-run: nothing left to do, nothing pushed
    assert job.ran[-1] == "Apply and push", job.log
    assert git(origin, "rev-parse", "main").strip() == tip


def test_a_rejected_push_leaves_nothing_and_the_re_run_applies(tmp_path, bao, issuer, ci_server):
    """The origin refuses the apply job's push once (a pre-receive hook): the job fails, the origin is
    untouched and Vault holds no key that state/ does not name; the re-run applies and pushes."""
    origin, dev, runner = github_project(tmp_path, bao, issuer, ci_server)
    apply = EXAMPLES / "github" / "pki-apply.yml"
    runner.run(apply, "push")
    open_pull_request(dev)
    merge_pull_request(dev)
    merged = git(origin, "rev-parse", "main").strip()
    marker = tmp_path / "reject-once"
    marker.touch()
    hook = origin / "hooks" / "pre-receive"
    hook.write_text(f'#!/bin/sh\nif [ -e "{marker}" ]; then rm "{marker}"; echo "refused once" >&2; exit 1; fi\n')
    hook.chmod(0o755)

    with pytest.raises(StepFailed, match=r"(?s)step 'Apply and push' exited 1:.*another apply landed first"):
        runner.run(apply, "push")
    assert git(origin, "rev-parse", "main").strip() == merged
    jwt = main_jwt(issuer, GITHUB_MAIN)
    clone = fresh_clone(tmp_path, origin, "after-rejection")
    keys = Pki(clone, clean_env(VAULT_ADDR=bao.address, VAULT_JWT=jwt))("keys", "--format", "json", expect=0).json()
    assert sorted(k["entry"] for k in keys) == ["authority.inter", "authority.root", "certificate.server",
                                                "the audit log"], keys
    assert {k["status"] for k in keys} == {"in use"}, keys

    [job] = runner.run(apply, "push")
    assert job.ran[-1] == "Apply and push", job.log
    assert git(origin, "rev-parse", "main~1").strip() == merged
    clone = assert_converged(tmp_path, origin, bao, "after-re-run", jwt)
    keys = Pki(clone, clean_env(VAULT_ADDR=bao.address, VAULT_JWT=jwt))("keys", "--format", "json", expect=0).json()
    assert "certificate.api" in {k["entry"] for k in keys} and {k["status"] for k in keys} == {"in use"}, keys


def test_a_wrong_command_fails_its_step(tmp_path, bao, issuer, ci_server, monkeypatch):
    """The runner is no rubber stamp: a step whose command fails stops the job, naming the step."""
    import ci_runner

    origin, dev, runner = github_project(tmp_path, bao, issuer, ci_server)
    original = ci_runner.load

    def broken(path: Path, old: str, new: str) -> None:
        def load(p: Path) -> dict:
            data = original(p)
            if p == path:
                for step in data["jobs"][next(iter(data["jobs"]))]["steps"]:
                    if old in step.get("run", ""):
                        step["run"] = step["run"].replace(old, new)
            return data
        monkeypatch.setattr(ci_runner, "load", load)

    apply = EXAMPLES / "github" / "pki-apply.yml"
    broken(apply, "pki apply --push", "pki aply --push")
    with pytest.raises(StepFailed, match="step 'Apply and push' exited"):
        runner.run(apply, "push")
    broken(apply, "audience=https://github.com/", "audience=https://github.example/")  # the role's audience
    with pytest.raises(StepFailed, match="step 'Apply and push' exited"):
        runner.run(apply, "push")
    broken(apply, 'python3 -m pip install "pkiascode[vault]"', 'python3 -m pip install "pkiascode-nightly"')
    with pytest.raises(StepFailed, match="not an install of pkiascode"):
        runner.run(apply, "push")
    assert git(origin, "ls-tree", "--name-only", "main", "state/").strip() == ""  # nothing was pushed


# -- GitLab CI -------------------------------------------------------------------------------------

def gitlab_audience() -> str:
    return load(GitLabRunner.path)[".pki-apply-job"]["id_tokens"]["VAULT_JWT"]["aud"]


def test_gitlab_merge_request_merge_apply_and_schedules(tmp_path, bao, issuer, ci_server):
    mount = jwt_mount(bao, issuer, iss="https://gitlab.example.com", audience=gitlab_audience(),
                      user_claim="user_login",
                      bound={"project_path": "example/pki", "ref": "main", "ref_protected": "true"})
    origin, dev, _ = make_origin(tmp_path, mount)
    ci_server.note_token = "glpat-" + secrets.token_hex(10)
    runner = GitLabRunner(origin, tmp_path / "runner", ci_server, sign=lambda c: sign_jwt(issuer, c),
                          variables={"VAULT_ADDR": bao.address, "PKI_NOTE_TOKEN": ci_server.note_token})
    names = lambda jobs: [j.name for j in jobs]  # noqa: E731

    jobs = runner.pipeline("push", branch="main")
    assert names(jobs) == ["pki-apply"], [j.log for j in jobs]
    assert jobs[0].ran[-1].startswith("pki apply --push")

    open_pull_request(dev)
    jobs = runner.pipeline("merge_request_event", branch="add-api", target="main")
    assert names(jobs) == ["pki-plan", "pki-plan-note"]
    plan_md = (jobs[0].workspace / "plan.md").read_text()
    assert plan_md.startswith(FIRST_LINE + "\n") and len(plan_md) < 65_536
    assert "certificate.api" in plan_md and "10.0.0.7" in plan_md, plan_md
    assert "VAULT_JWT" not in str(load(GitLabRunner.path)["pki-plan"])
    # a second push to the merge request updates the one note
    (dev / "pki.toml").write_text((dev / "pki.toml").read_text().replace('"10.0.0.7"', '"10.0.0.8"'))
    git(dev, "commit", "-q", "-am", "api: another address")
    git(dev, "push", "-q", "origin", "add-api")
    runner.pipeline("merge_request_event", branch="add-api", target="main")
    note = plan_comment(ci_server, f"{GitLabRunner.project_id}!7")
    assert note.startswith(FIRST_LINE) and "10.0.0.8" in note and "10.0.0.7" not in note, note

    merge_pull_request(dev)
    jobs = runner.pipeline("push", branch="main")
    assert names(jobs) == ["pki-apply"]
    clone = assert_converged(tmp_path, origin, bao, "after-merge",
                            main_jwt(issuer, {**GITLAB_MAIN, "aud": gitlab_audience()}))
    assert "api" in inventory(clone)
    assert "gl-merger" in audit_lines(clone)[-1]["actor"]
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert "https://gitlab.example.com/example/pki/-/jobs/" in message and "Pki-Plan:" in message, message

    tip = git(origin, "rev-parse", "main").strip()
    jobs = runner.pipeline("schedule", branch="main", variables={"PKI_SCHEDULE": "nightly"})
    assert names(jobs) == ["pki-renew"] and len(jobs[0].ran) == len(load(GitLabRunner.path)["pki-renew"]["script"]) + 6
    jobs = runner.pipeline("schedule", branch="main", variables={"PKI_SCHEDULE": "weekly"})
    assert names(jobs) == ["pki-look-ahead"]
    assert git(origin, "rev-parse", "main").strip() == tip
    # without the note token, the merge request pipeline is the plan alone
    runner.variables.pop("PKI_NOTE_TOKEN")
    assert names(runner.pipeline("merge_request_event", branch="add-api", target="main")) == ["pki-plan"]


def test_gitlab_jobs_that_must_not_share_secrets():
    config = load(GitLabRunner.path)
    assert config["pki-plan"].get("id_tokens") is None and "extends" not in config["pki-plan"]
    for name in ("pki-apply", "pki-renew"):
        assert config[name]["extends"] == ".pki-apply-job"
    assert config[".pki-apply-job"]["resource_group"] == "pki-apply"
    assert json.dumps(config).count("--push-to") == 2


def test_a_gitlab_job_fails_at_a_wrong_or_skipped_item(tmp_path, ci_server):
    """A script item that fails stops the job, naming it; an item that ends the script early (so
    later items never run) fails it too."""
    require_tool("git")
    origin, dev, _ = make_origin(tmp_path, "jwt")
    open_pull_request(dev)
    runner = GitLabRunner(origin, tmp_path / "runner", ci_server, sign=lambda c: "", variables={})
    script = runner.config["pki-plan"]["script"]
    assert [j.name for j in runner.pipeline("merge_request_event", branch="add-api", target="main")] == ["pki-plan"]
    runner.config["pki-plan"]["script"] = [s.replace("--offline", "--ofline") for s in script]
    with pytest.raises(StepFailed, match=r"pki-plan: exited 1 at item 3/3 'pki plan --ofline"):
        runner.pipeline("merge_request_event", branch="add-api", target="main")
    runner.config["pki-plan"]["script"] = [script[0], "exit 0", script[1]]
    with pytest.raises(StepFailed, match=r"pki-plan: exited 0 at item 3/4 'exit 0'"):
        runner.pipeline("merge_request_event", branch="add-api", target="main")
