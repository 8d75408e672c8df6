"""Runs the pipelines of examples/ci/ as GitHub Actions and GitLab CI would, on this machine, so the
examples cannot rot (used by tests/test_examples_ci.py).

What is real: each job's checkout is a fresh clone of a bare origin (real git, through ``file://``),
its shell steps run in order in bash with the runner's options (GitHub: ``bash --noprofile --norc
-eo pipefail`` for ``shell: bash``; GitLab: one bash script with ``set -eo pipefail``), and they
reach a real OpenBao. What is emulated, and how:

- GitHub: ``$GITHUB_ENV`` and ``$GITHUB_OUTPUT`` are fresh files per step, read back after it (both
  ``NAME=value`` and ``NAME<<DELIMITER`` forms) into the environment of the later steps and
  ``steps.ID.outputs``; ``${{ }}`` expressions know ``vars.*``, ``github.*`` (a few fields) and
  ``steps.*.outputs.*``, and ``A == 'literal'``; any other expression is an error. The OIDC request
  URL and token are set only for a workflow or job with ``permissions: id-token: write``; the URL is
  `CiServer` on 127.0.0.1, which signs a JWT with GitHub's claims for the job.
- GitLab: ``rules`` (``$A == "x"``, ``$A == $B``, ``$A``, joined by ``&&``) pick the jobs of a
  pipeline; ``extends`` and ``default`` are merged; jobs run in stage order; artifacts of earlier
  jobs (or of ``needs``) are copied into later ones; each ``id_tokens`` entry is a JWT signed with
  GitLab's claims and the entry's ``aud``; ``CI_API_V4_URL`` is `CiServer`, which keeps notes.
- ``uses:`` steps: only those in `GITHUB_ACTIONS` are known (checkout = the fresh clone,
  setup-python = this interpreter, the sticky comment = `CiServer.comments` after checking the file
  it would post); any other is an error, never a silent skip.
- Install steps: a step (or script line) that is exactly ``python3 -m pip install`` of pkiascode
  (`INSTALL`) does not touch the network: it is replaced by a check that the installed pkiascode
  satisfies it (its extras importable). Anything else that mentions pip fails the job.
- ``image:``/``runs-on:``: the job runs on this machine, with ``pki`` and ``python3`` on ``PATH``.

Every job returns the steps it ran and skipped; a step that fails raises `StepFailed` naming it.
"""

from __future__ import annotations

import copy
import http.server
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helpers import clean_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ci"
FIRST_LINE = "<!-- pkiascode plan -->"
COMMENT_LIMIT = 65_536

#: what an install step may be: pkiascode from the registry, with or without the vault extra
INSTALL = re.compile(r'python3 -m pip install (?:-q )?"?pkiascode(?P<extra>\[vault\])?"?')

#: the runner's own identity, for the merge commit GitHub makes of a pull request
RUNNER_GIT = {"GIT_AUTHOR_NAME": "runner", "GIT_AUTHOR_EMAIL": "runner@example.invalid",
              "GIT_COMMITTER_NAME": "runner", "GIT_COMMITTER_EMAIL": "runner@example.invalid"}


class StepFailed(AssertionError):
    """A step (or script line) exited non-zero, or the emulation refused it."""


@dataclass
class Job:
    """What one job did."""

    name: str
    workspace: Path
    ran: list[str] = field(default_factory=list)      # steps (GitHub) or script items (GitLab), in order
    skipped: list[str] = field(default_factory=list)  # steps whose `if:` was false
    log: str = ""


# -- the OIDC token endpoint and the GitLab notes API --------------------------------------------

class CiServer:
    """127.0.0.1: GitHub's OIDC token endpoint (``/github/token``) and GitLab's merge request notes
    (``/api/v4/projects/ID/merge_requests/IID/notes[/NOTE]``)."""

    def __init__(self, sign: Callable[[dict[str, Any]], str]) -> None:
        self.sign = sign
        self.github_claims: dict[str, Any] = {}  # the current job's claims, without aud
        self.request_token = ""                   # what $ACTIONS_ID_TOKEN_REQUEST_TOKEN must be
        self.note_token = ""                      # what PRIVATE-TOKEN must be
        self.notes: dict[str, list[dict[str, Any]]] = {}
        self.token_requests: list[str] = []       # the audiences asked for
        handler = self._handler()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, data: Any) -> None:
                body = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def body(self) -> dict[str, Any]:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

            def notes(self) -> tuple[list[dict[str, Any]], str] | None:
                m = re.fullmatch(r"/api/v4/projects/(\d+)/merge_requests/(\d+)/notes(?:/(\d+))?",
                                 urllib.parse.urlsplit(self.path).path)
                if not m or self.headers.get("PRIVATE-TOKEN") != server.note_token or not server.note_token:
                    self.reply(401 if m else 404, {"message": "401 Unauthorized" if m else "404 Not Found"})
                    return None
                return server.notes.setdefault(f"{m[1]}!{m[2]}", []), m[3] or ""

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/github/token":
                    query = urllib.parse.parse_qs(url.query)
                    if self.headers.get("Authorization") != f"bearer {server.request_token}" \
                            or query.get("api-version") != ["2.0"] or not server.request_token:
                        return self.reply(401, {"message": "bad request token"})
                    audience = query.get("audience", [""])[0]
                    server.token_requests.append(audience)
                    now = int(time.time())
                    claims = {**server.github_claims, "aud": audience, "iat": now, "nbf": now - 5, "exp": now + 600}
                    return self.reply(200, {"count": 1, "value": server.sign(claims)})
                found = self.notes()
                if found is not None:
                    self.reply(200, found[0])

            def do_POST(self) -> None:
                found = self.notes()
                if found is not None:
                    notes, _ = found
                    notes.append({"id": len(notes) + 1, "body": self.body()["body"]})
                    self.reply(201, notes[-1])

            def do_PUT(self) -> None:
                found = self.notes()
                if found is not None:
                    notes, note = found
                    match = [n for n in notes if str(n["id"]) == note]
                    if not match:
                        return self.reply(404, {"message": "404 Note Not Found"})
                    match[0]["body"] = self.body()["body"]
                    self.reply(200, match[0])

        return Handler


# -- shared pieces -------------------------------------------------------------------------------

def load(path: Path) -> dict[Any, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def job_env(home: Path) -> dict[str, str]:
    """A runner's environment: no git identity, no actor, no Vault settings, a home of its own, and
    the directory of this interpreter (its ``python3`` and ``pki``) first on PATH."""
    env = {k: v for k, v in clean_env().items() if not k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_"))
           and k != "PKI_ACTOR"}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["CI"] = "true"
    return env


def check_install(command: str) -> None:
    """An install step, emulated: the installed pkiascode is what it would install."""
    m = INSTALL.fullmatch(command.strip())
    if m is None:
        raise StepFailed(f"not an install step this runner knows: {command!r}")
    importlib.metadata.version("pkiascode")
    if m["extra"] and importlib.util.find_spec("hvac") is None:
        raise StepFailed("pkiascode[vault] is not installed here (hvac is missing)")


def is_install(command: str) -> bool:
    if "pip" not in command:
        return False
    if INSTALL.fullmatch(command.strip()) is None:
        raise StepFailed(f"a pip command that is not an install of pkiascode: {command!r}")
    return True


def git(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(env or clean_env()), timeout=120)
    if proc.returncode:
        raise StepFailed(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def bash(script: Path, cwd: Path, env: Mapping[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "--noprofile", "--norc", *options, str(script)], cwd=cwd, env=dict(env),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)


def read_env_file(path: Path) -> dict[str, str]:
    """``$GITHUB_ENV``/``$GITHUB_OUTPUT``: ``NAME=value`` lines and ``NAME<<DELIM`` blocks."""
    values: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            values[name] = "\n".join(lines[i + 1:end])
            i = end + 1
            continue
        if line.strip():
            name, _, value = line.partition("=")
            values[name] = value
        i += 1
    return values


# -- GitHub Actions ------------------------------------------------------------------------------

def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """The ``on:`` table (YAML 1.1 reads a bare ``on`` as True)."""
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {name: None for name in on}
    return dict(on or {})


def github_workflows(event: str, branch: str) -> list[Path]:
    """The example workflows this event starts (push: filtered by ``branches``)."""
    found = []
    for path in sorted((EXAMPLES / "github").glob("*.yml")):
        on = triggers(load(path))
        if event not in on:
            continue
        if event == "push" and branch not in ((on[event] or {}).get("branches") or [branch]):
            continue
        found.append(path)
    return found


class GitHubRunner:
    """Runs workflows for one repository whose origin is the bare repository ``origin``."""

    repository = "example/pki"

    def __init__(self, origin: Path, workdir: Path, server: CiServer, *, variables: Mapping[str, str]) -> None:
        self.origin, self.workdir, self.server = origin, workdir, server
        self.variables = dict(variables)
        self.runs = 0

    def run(self, path: Path, event: str, *, ref: str = "main", base: str | None = None,
            actor: str = "octo-merger", before_step: Callable[[str], None] | None = None) -> list[Job]:
        """Every job of workflow ``path`` for ``event`` on branch ``ref`` (a pull request: from
        ``ref`` into ``base``), one after the other. ``before_step(label)`` is called before each
        step runs (to let something else happen meanwhile)."""
        workflow = load(path)
        assert event in triggers(workflow), f"{path.name} does not run on {event}"
        assert workflow.get("defaults", {}).get("run", {}).get("shell") == "bash", \
            f"{path.name}: this runner knows `defaults: run: shell: bash` only"
        return [self._job(workflow, path.name, name, spec, event, ref, base, actor, before_step)
                for name, spec in workflow["jobs"].items()]

    def _job(self, workflow: dict[Any, Any], file: str, name: str, spec: dict[str, Any], event: str,
             ref: str, base: str | None, actor: str, before_step: Callable[[str], None] | None) -> Job:
        self.runs += 1
        root = self.workdir / f"gh{self.runs}-{name}"
        workspace, temp = root / "work", root / "temp"
        temp.mkdir(parents=True)
        job = Job(f"{file}:{name}", workspace)
        github_ref = f"refs/pull/{self.runs}/merge" if event == "pull_request" else f"refs/heads/{ref}"
        env = job_env(root / "home")
        env.update({
            "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(workspace), "RUNNER_TEMP": str(temp),
            "GITHUB_EVENT_NAME": event, "GITHUB_REF": github_ref,
            "GITHUB_REF_NAME": f"{self.runs}/merge" if event == "pull_request" else ref,
            "GITHUB_BASE_REF": base or "", "GITHUB_HEAD_REF": ref if event == "pull_request" else "",
            "GITHUB_REPOSITORY": self.repository, "GITHUB_REPOSITORY_OWNER": self.repository.split("/")[0],
            "GITHUB_ACTOR": actor, "GITHUB_RUN_ID": str(1000 + self.runs), "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_STEP_SUMMARY": str(temp / "summary.md"),
        })
        permissions = {**(workflow.get("permissions") or {}), **(spec.get("permissions") or {})}
        if permissions.get("id-token") == "write":
            self.server.request_token = f"request-token-{self.runs}"
            env["ACTIONS_ID_TOKEN_REQUEST_URL"] = f"{self.server.url}/github/token?api-version=2.0"
            env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = self.server.request_token
            self.server.github_claims = {
                "iss": "https://token.actions.githubusercontent.com", "sub": f"repo:{self.repository}:ref:{github_ref}",
                "ref": github_ref, "repository": self.repository, "repository_owner": env["GITHUB_REPOSITORY_OWNER"],
                "actor": actor, "event_name": event, "run_id": env["GITHUB_RUN_ID"]}
        steps: dict[str, dict[str, dict[str, str]]] = {}
        context = {"vars": self.variables, "steps": steps,
                   "github": {"event_name": event, "ref": github_ref, "ref_name": env["GITHUB_REF_NAME"],
                              "base_ref": base or "", "repository": self.repository, "actor": actor}}
        for key, value in {**(workflow.get("env") or {}), **(spec.get("env") or {})}.items():
            env[key] = substitute(str(value), context)
        for number, step in enumerate(spec["steps"], 1):
            label = step.get("name") or step.get("uses") or f"step {number}"
            if "if" in step and not truthy(evaluate(unwrap(str(step["if"])), context)):
                job.skipped.append(label)
                continue
            if before_step is not None:
                before_step(label)
            if "uses" in step:
                self._action(step, job, env, context, event, ref, base)
            else:
                outputs = self._shell(step, label, job, env, context, temp)
                if "id" in step:
                    steps[step["id"]] = {"outputs": outputs}
            job.ran.append(label)
        return job

    def _shell(self, step: dict[str, Any], label: str, job: Job, env: dict[str, str], context: dict[str, Any],
               temp: Path) -> dict[str, str]:
        script = substitute(step["run"], context)
        if is_install(script):
            check_install(script)
            job.log += f"## {label}: emulated (pkiascode is installed)\n"
            return {}
        env_file, output_file = temp / f"env-{len(job.ran)}", temp / f"output-{len(job.ran)}"
        step_env = dict(env, GITHUB_ENV=str(env_file), GITHUB_OUTPUT=str(output_file))
        step_env.update({k: substitute(str(v), context) for k, v in (step.get("env") or {}).items()})
        path = temp / f"step-{len(job.ran)}.sh"
        path.write_text(script, encoding="utf-8")
        proc = bash(path, job.workspace, step_env, "-eo", "pipefail")
        job.log += f"## {label} [exit {proc.returncode}]\n{proc.stdout}{proc.stderr}"
        if proc.returncode:
            raise StepFailed(f"{job.name}: step {label!r} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        env.update(read_env_file(env_file))
        return read_env_file(output_file)

    def _action(self, step: dict[str, Any], job: Job, env: dict[str, str], context: dict[str, Any],
                event: str, ref: str, base: str | None) -> None:
        action, _, version = step["uses"].partition("@")
        known = GITHUB_ACTIONS.get(action)
        if known is None or version != known:
            raise StepFailed(f"{job.name}: `uses: {step['uses']}` is not an action this runner emulates")
        options = {k: substitute(str(v), context) for k, v in (step.get("with") or {}).items()}
        if action == "actions/checkout":
            self._checkout(job.workspace, options, env, event, ref, base)
        elif action == "actions/setup-python":
            assert sys.version_info >= (3, 11), "pkiascode needs Python 3.11"
        elif action == "marocchino/sticky-pull-request-comment":
            body = (job.workspace / options["path"]).read_text(encoding="utf-8")
            if not body.startswith(FIRST_LINE + "\n") or len(body) >= COMMENT_LIMIT:
                raise StepFailed(f"{job.name}: {options['path']} is no plan comment: starts "
                                 f"{body[:40]!r}, {len(body)} characters")
            self.server.notes[f"github!{options.get('header', '')}"] = [{"id": 1, "body": body}]

    def _checkout(self, workspace: Path, options: dict[str, str], env: dict[str, str], event: str, ref: str,
                  base: str | None) -> None:
        """actions/checkout: a fresh clone; a pull request's merge into its base, detached (GitHub's
        refs/pull/N/merge); else the branch ``with.ref`` (default: the event's), tracking origin."""
        depth = int(options.get("fetch-depth", "1"))
        url = f"file://{self.origin}"
        branch = options.get("ref") or (base if event == "pull_request" else ref)
        args = ["clone", "-q"] + (["--depth", str(depth), "--no-single-branch"] if depth else [])
        git(workspace.parent, *args, "--branch", branch, url, workspace.name)
        if event == "pull_request" and not options.get("ref"):
            git(workspace, "checkout", "-q", "--detach", f"origin/{base}")
            git(workspace, "merge", "-q", "--no-ff", "--no-edit", f"origin/{ref}", env=clean_env(**RUNNER_GIT))
        env["GITHUB_SHA"] = git(workspace, "rev-parse", "HEAD").strip()


#: the `uses:` this runner emulates, with the version the examples must pin
GITHUB_ACTIONS = {"actions/checkout": "v4", "actions/setup-python": "v5",
                  "marocchino/sticky-pull-request-comment": "v2"}

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def unwrap(text: str) -> str:
    m = EXPRESSION.fullmatch(text.strip())
    return m[1] if m else text.strip()


def substitute(text: str, context: dict[str, Any]) -> str:
    return EXPRESSION.sub(lambda m: str(evaluate(m[1], context)), text)


def evaluate(expr: str, context: dict[str, Any]) -> Any:
    """``a.b.c`` or ``a.b.c == 'literal'``; nothing else."""
    m = re.fullmatch(r"([\w.-]+)\s*==\s*'([^']*)'", expr)
    if m:
        return str(lookup(m[1], context)) == m[2]
    if not re.fullmatch(r"[\w.-]+", expr):
        raise StepFailed(f"expression this runner does not evaluate: {expr!r}")
    return lookup(expr, context)


def lookup(path: str, context: dict[str, Any]) -> Any:
    head, *rest = path.split(".")
    if head not in context:
        raise StepFailed(f"unknown context {head!r} in {path!r}")
    value: Any = context[head]
    for part in rest:
        value = value.get(part, "") if isinstance(value, dict) else ""
    return value


def truthy(value: Any) -> bool:
    return bool(value) and value != "false"


# -- GitLab CI -----------------------------------------------------------------------------------

GITLAB_RESERVED = {"variables", "default", "stages", "workflow", "include", "image", "services", "cache"}


class GitLabRunner:
    """Runs pipelines of examples/ci/gitlab/.gitlab-ci.yml for one project whose origin is ``origin``."""

    project_path, project_id, host = "example/pki", "42", "gitlab.example.com"
    path = EXAMPLES / "gitlab" / ".gitlab-ci.yml"

    def __init__(self, origin: Path, workdir: Path, server: CiServer, *, variables: Mapping[str, str],
                 sign: Callable[[dict[str, Any]], str]) -> None:
        self.origin, self.workdir, self.server, self.sign = origin, workdir, server, sign
        self.variables = dict(variables)  # the project's CI/CD variables
        self.config = load(self.path)
        self.runs = 0

    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every job with ``extends`` and ``default`` merged in."""
        raw = self.config

        def resolve(name: str) -> dict[str, Any]:
            spec = copy.deepcopy(raw[name])
            parents = spec.pop("extends", [])
            merged: dict[str, Any] = {}
            for parent in [parents] if isinstance(parents, str) else parents:
                merged = deep_merge(merged, resolve(parent))
            return deep_merge(merged, spec)

        default = raw.get("default") or {}
        return {name: deep_merge(copy.deepcopy(default), resolve(name)) for name in raw
                if name not in GITLAB_RESERVED and not str(name).startswith(".")}

    def pipeline(self, source: str, *, branch: str, target: str | None = None, mr_iid: str = "7",
                 variables: Mapping[str, str] | None = None, user: str = "gl-merger") -> list[Job]:
        """The jobs ``rules`` select for a pipeline of ``source`` (``push``, ``merge_request_event``,
        ``schedule``, ``web``) on ``branch`` (a merge request: from ``branch`` into ``target``), run in
        stage order."""
        self.runs += 1
        sha = git(self.origin, "rev-parse", f"refs/heads/{branch}").strip()
        predefined = {
            "CI": "true", "GITLAB_CI": "true", "CI_PIPELINE_SOURCE": source, "CI_COMMIT_SHA": sha,
            "CI_DEFAULT_BRANCH": "main", "CI_PROJECT_ID": self.project_id, "CI_PROJECT_PATH": self.project_path,
            "CI_SERVER_HOST": self.host, "CI_SERVER_URL": f"https://{self.host}",
            "CI_API_V4_URL": f"{self.server.url}/api/v4", "GITLAB_USER_LOGIN": user,
            "CI_PIPELINE_ID": str(500 + self.runs),
        }
        if source == "merge_request_event":
            predefined.update(CI_MERGE_REQUEST_IID=mr_iid, CI_MERGE_REQUEST_TARGET_BRANCH_NAME=target or "main",
                              CI_MERGE_REQUEST_SOURCE_BRANCH_NAME=branch)
        else:
            predefined["CI_COMMIT_BRANCH"] = branch
        given = {**predefined, **self.variables, **(variables or {})}
        stages = self.config.get("stages") or ["build", "test", "deploy"]
        chosen = [(name, spec) for name, spec in self.jobs().items() if rules_match(spec, given)]
        chosen.sort(key=lambda item: stages.index(item[1].get("stage", "test")))
        done: dict[str, Job] = {}
        for name, spec in chosen:
            done[name] = self._job(name, spec, given, branch, sha, done)
        return list(done.values())

    def _job(self, name: str, spec: dict[str, Any], given: dict[str, str], branch: str, sha: str,
             done: dict[str, Job]) -> Job:
        root = self.workdir / f"gl{self.runs}-{name}"
        workspace = root / "build"
        root.mkdir(parents=True)
        job = Job(name, workspace)
        yaml_vars = {**(self.config.get("variables") or {}), **(spec.get("variables") or {})}
        depth = str(yaml_vars.get("GIT_DEPTH", "20"))
        assert yaml_vars.get("GIT_STRATEGY") == "clone", "the examples' jobs are fresh clones"
        # the runner: fetch the pipeline's branch only, detached at the pipeline's commit
        git(root, "init", "-q", workspace.name)
        git(workspace, "remote", "add", "origin", f"file://{self.origin}")
        git(workspace, "fetch", "-q", *(["--depth", depth] if depth != "0" else []), "origin",
            f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
        git(workspace, "checkout", "-q", "--detach", sha)
        for source in spec.get("needs") or [j for j in done]:
            for pattern in ((self.config.get(source) or {}).get("artifacts") or {}).get("paths") or []:
                for found in done[source].workspace.glob(pattern):
                    shutil.copy2(found, workspace / found.relative_to(done[source].workspace))
        env = job_env(root / "home")
        env.update({k: str(v) for k, v in yaml_vars.items()})
        env.update(given)
        env.update(CI_PROJECT_DIR=str(workspace), CI_JOB_NAME=name,
                   CI_JOB_URL=f"https://{self.host}/{self.project_path}/-/jobs/{900 + self.runs}")
        for token_name, token in (spec.get("id_tokens") or {}).items():
            now = int(time.time())
            ref_type = "branch"
            env[token_name] = self.sign({
                "iss": f"https://{self.host}", "aud": token["aud"], "iat": now, "nbf": now - 5, "exp": now + 600,
                "sub": f"project_path:{self.project_path}:ref_type:{ref_type}:ref:{branch}",
                "project_path": self.project_path, "ref": branch, "ref_type": ref_type,
                "ref_protected": "true" if branch == "main" else "false",
                "user_login": given["GITLAB_USER_LOGIN"], "pipeline_source": given["CI_PIPELINE_SOURCE"]})
        items = (spec.get("before_script") or []) + (spec.get("script") or [])
        if not all(isinstance(item, str) for item in items):  # `- a: b` is a table, not a command
            raise StepFailed(f"{name}: a script item is not a string: {items}")
        lines = ["__ci_item=0", 'trap \'printf "%s %s\\n" "$__ci_item" "$?" > "$__CI_TRACE"\' EXIT']
        shown: list[str] = []
        for number, item in enumerate(items, 1):
            if is_install(item):
                check_install(item)
                item = ": emulated install of pkiascode"
            lines += [f"__ci_item={number}", item]
            shown.append(item.splitlines()[0])
        script = root / "script.sh"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        trace = root / "trace"
        env["__CI_TRACE"] = str(trace)
        proc = bash(script, workspace, env, "-eo", "pipefail")
        job.log = proc.stdout + proc.stderr
        reached = int(trace.read_text().split()[0])
        job.ran = shown[:reached]
        if proc.returncode or reached != len(items):
            failed = shown[reached - 1] if reached else "(before the first item)"
            raise StepFailed(f"{name}: exited {proc.returncode} at item {reached}/{len(items)} {failed!r}:\n{job.log}")
        return job


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """GitLab's merge for ``extends``/``default``: tables merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def rules_match(spec: dict[str, Any], variables: Mapping[str, str]) -> bool:
    rules = spec.get("rules")
    assert rules, "every example job has rules"
    return any(condition(rule["if"], variables) for rule in rules)


def condition(text: str, variables: Mapping[str, str]) -> bool:
    """``$A == "x"``, ``$A == $B`` and ``$A`` (set and not empty), joined by ``&&``."""
    def value(term: str) -> str:
        term = term.strip()
        if term.startswith("$"):
            return variables.get(term[1:], "")
        m = re.fullmatch(r'"([^"]*)"', term)
        if not m:
            raise StepFailed(f"rule term this runner does not evaluate: {term!r}")
        return m[1]

    for part in text.split("&&"):
        if "==" in part:
            left, right = part.split("==")
            if value(left) != value(right):
                return False
        elif not value(part):
            return False
    return True
