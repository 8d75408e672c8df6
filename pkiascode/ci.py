"""Who applies, when a CI system runs `pki apply`: the person and the run, from the variables the CI
system sets for every job.

- GitHub Actions (``GITHUB_ACTIONS=true``): ``GITHUB_ACTOR`` (who triggered the run), the run's URL
  from ``GITHUB_SERVER_URL``/``GITHUB_REPOSITORY``/``actions/runs/``\\ ``GITHUB_RUN_ID``;
- GitLab CI (``GITLAB_CI=true``): ``GITLAB_USER_LOGIN``, ``CI_JOB_URL``;
- else ``PKI_ACTOR``, else user@host (`pkiascode.audit.actor`).

The audit log's ``actor`` and the apply commit's trailers (``Pki-Actor:``, ``Pki-Run:``, besides
``Pki-Plan:`` and ``Pki-Config:``) come from here. Values are printable text only: a variable with a
control character or an unlikely length is ignored.
"""

from __future__ import annotations

import dataclasses
import os
import re

from . import audit

__all__ = ["Pipeline", "pipeline", "actor", "trailers"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?\Z")


@dataclasses.dataclass(frozen=True)
class Pipeline:
    system: str  # "GitHub Actions", "GitLab CI"
    login: str
    run_url: str | None


def _var(name: str) -> str | None:
    value = os.environ.get(name, "")
    return value if _PRINTABLE.match(value) else None


def pipeline() -> Pipeline | None:
    """The CI run this process is part of, if the environment says so."""
    if os.environ.get("GITHUB_ACTIONS") == "true" and _var("GITHUB_ACTOR"):
        server, repository, run_id = _var("GITHUB_SERVER_URL"), _var("GITHUB_REPOSITORY"), _var("GITHUB_RUN_ID")
        url = f"{server.rstrip('/')}/{repository}/actions/runs/{run_id}" if server and repository and run_id else None
        return Pipeline("GitHub Actions", _var("GITHUB_ACTOR") or "", url)
    if os.environ.get("GITLAB_CI") == "true" and _var("GITLAB_USER_LOGIN"):
        return Pipeline("GitLab CI", _var("GITLAB_USER_LOGIN") or "", _var("CI_JOB_URL"))
    return None


def actor() -> str:
    """The audit log's actor: the CI user and run (``octocat (https://github.com/o/r/actions/runs/7)``),
    else `audit.actor` (``PKI_ACTOR``, else user@host)."""
    run = pipeline()
    if run is None:
        return audit.actor()
    return f"{run.login} ({run.run_url})" if run.run_url else f"{run.login} ({run.system})"


def trailers(*, plan_digest: str | None, config_blob: str | None) -> str:
    """The trailer block of an apply commit, as `git interpret-trailers` writes one (``Key: value``
    lines after a blank line)."""
    lines = []
    if plan_digest:
        lines.append(f"Pki-Plan: {plan_digest}")
    if config_blob:
        lines.append(f"Pki-Config: {config_blob}")
    run = pipeline()
    lines.append(f"Pki-Actor: {run.login if run else _CONTROL.sub('?', audit.actor())}")
    if run is not None and run.run_url:
        lines.append(f"Pki-Run: {run.run_url}")
    return "".join(line + "\n" for line in lines)
