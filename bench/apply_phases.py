"""Where a ``pki apply`` spends its time, by phase, with almost no profiler overhead.

    python bench/apply_phases.py [pki apply options...]   # in a project directory; prints JSON

Deterministic profilers (cProfile, and pyinstrument's call hooks) inflate code made of many small
Python calls several times over. This runs the real ``pki apply`` (``pkiascode.cli.main``) with a
timer around a few dozen pkiascode functions instead: each wrapper costs about a microsecond, and
most phases are called a handful of times, so the figures are real wall-clock.

Labels are indented by nesting: a phase includes the indented phases after it. Labels ending in
"(all calls)" add up every call wherever it happens.

Functions are looked up by name; one that pkiascode no longer has is listed under "missing" rather
than failing (`bench/run.py` prints that list, so a rename shows up).
``bench/phases.py`` does the same for ``pki plan``.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import sys  # noqa: E402
import functools
import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any

#: (module, attribute path, label)
PHASES = [
    ("pkiascode.project", "Project.desired", "load pki.toml (Project.desired)"),
    ("pkiascode.apply", "preflight", "preflight (git checks)"),
    ("pkiascode.apply", "recover", "recover"),
    ("pkiascode.project", "Project.plan", "plan (Project.plan)"),
    ("pkiascode.project", "Project._remembered_noop", "  no-op memo check"),
    ("pkiascode.project", "Project.observe", "  observe state + key stores"),
    ("pkiascode.planner", "plan", "  planner.plan"),
    ("pkiascode.lint", "lint_plan", "  lint (pkilint over what the plan signs)"),
    ("pkiascode.lint", "_lint_certificate", "    pkilint, per certificate (whole or in parts)"),
    ("pkiascode.lint", "_validators", "      importing pkilint, building its validators (once)"),
    ("pkiascode.lint", "_throwaway_key", "    throwaway keys"),
    ("pkiascode.render", "render_text", "render_text"),
    ("pkiascode.apply", "execute", "execute"),
    ("pkiascode.apply", "_Run.__init__", "  _Run.__init__"),
    ("pkiascode.plan", "Plan.digest", "    Plan.digest"),
    ("pkiascode.apply", "_Run.check_stores", "  check_stores"),
    ("pkiascode.apply", "_Run.move_keys", "  move_keys"),
    ("pkiascode.apply", "_Run.generate_keys", "  generate_keys"),
    ("pkiascode.apply", "_Run.sign", "  sign"),
    ("pkiascode.apply", "_Run.make_certificate", "    make_certificate"),
    ("pkiascode.x509", "build_certificate", "      x509.build_certificate"),
    ("pkiascode.apply", "_Run.sign_crls", "  sign_crls"),
    ("pkiascode.apply", "_Run.transaction", "  transaction (inventory, audit chain)"),
    ("pkiascode.apply", "complete", "  complete (the transaction)"),
    ("pkiascode.state", "StateDir.begin", "    StateDir.begin (txn file, fsync)"),
    ("pkiascode.state", "StateDir.roll_forward", "    roll_forward (write state/)"),
    ("pkiascode.gitops", "Repository.commit_state", "    git commit (plumbing)"),
    ("pkiascode.apply", "_cleanup_orphans", "    _cleanup_orphans"),
    ("pkiascode.apply", "_process_deletes", "  _process_deletes"),
    ("pkiascode.project", "Project.close", "Project.close"),
    ("pkiascode.gitops", "Repository._git", "git plumbing calls (all calls)"),
    ("pkiascode.state", "StateDir.journal_key", "key journal lines (all calls)"),
    ("pkiascode_local", "LocalKeyStore._write", "key files written (all calls)"),
    ("pkiascode.gitops", "find_repository", "find_repository (all calls)"),
]

totals: dict[str, float] = {}
calls: dict[str, int] = {}
missing: list[str] = []


def _wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - t
            calls[label] = calls.get(label, 0) + 1
    return timed


def install(phases: Sequence[tuple[str, str, str]]) -> None:
    for mod_name, attr, label in phases:
        try:
            mod = importlib.import_module(mod_name)
            owner: Any = mod
            parts = attr.split(".")
            for p in parts[:-1]:
                owner = getattr(owner, p)
            fn = getattr(owner, parts[-1])
        except (ImportError, AttributeError):
            missing.append(f"{mod_name}.{attr}")
            continue
        wrapped = _wrap(label, fn)
        setattr(owner, parts[-1], wrapped)
        # modules that imported the function by name (``from .planner import plan as make_plan``) keep
        # the old one: patch those references too
        if owner is mod:
            for other in list(sys.modules.values()):
                if not getattr(other, "__name__", "").startswith("pkiascode"):
                    continue
                for name, value in list(vars(other).items()):
                    if value is fn:
                        setattr(other, name, wrapped)


def run_cli(command: str, args: list[str], phases: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """``pki COMMAND ARGS`` in this process with ``phases`` timed; the figures as a dict."""
    t = time.perf_counter()
    import pkiascode.apply
    import pkiascode.cli
    import pkiascode.render
    import pkiascode.x509

    imports = time.perf_counter() - t
    install(phases)
    sys.argv = ["pki", command, *args]
    code = 0
    t = time.perf_counter()
    try:
        pkiascode.cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    run = time.perf_counter() - t
    out: dict[str, Any] = {"imports (cli, apply, x509, render)": imports}
    out.update({k: totals[k] for _, _, k in phases if k in totals})
    top = sum(totals[k] for _, _, k in phases if k in totals and not k.startswith(" ") and "all calls" not in k)
    out["other (cli outside these phases)"] = max(0.0, run - top)
    out["cli main total"] = run
    out["calls"] = {k: calls[k] for _, _, k in phases if k in calls}
    out["missing"] = missing
    out["exit_code"] = code
    out["total_in_process"] = time.perf_counter() - T0
    return out


def main() -> int:
    out = run_cli("apply", sys.argv[1:] or ["--auto-approve"], PHASES)
    sys.stdout.flush()
    print("\nAPPLY-PHASES " + json.dumps(out))
    return out["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
