"""Where a ``pki plan`` spends its time, phase by phase (run in the project directory).

    python bench/phases.py [pki plan options...]     # prints PLAN-PHASES {JSON: seconds per phase}

Runs the real ``pki plan`` (default ``--detailed-exitcode``) in this process with a timer around the
steps of `Project.plan` (the same wrappers as ``bench/apply_phases.py``: no profiler overhead). With a
remembered no-op plan (``.pki/cache/noop.json`` still valid) only the memo check runs; without one
the full path runs (parse pki.toml, read state/ and check files for drift, ask the key stores, plan,
remember the no-op). A step pkiascode no longer has is listed under "missing".
"""

from __future__ import annotations

import json
import sys

from apply_phases import run_cli

#: (module, attribute path, label); indented labels are part of the phase above them
PHASES = [
    ("pkiascode.project", "Project.plan", "Project.plan"),
    ("pkiascode.project", "Project._remembered_noop", "  no-op memo check"),
    ("pkiascode.memo", "NoopMemo.load", "    read noop.json"),
    ("pkiascode.project", "Project.desired", "  load pki.toml (parse)"),
    ("pkiascode.project", "Project.csrs", "  CSRs"),
    ("pkiascode.project", "Project.observe", "  observe"),
    ("pkiascode.state", "StateDir.observe", "    state/: inventory + file drift"),
    ("pkiascode.project", "Project.verify_state", "    verify_state (certificate files against the inventory)"),
    ("pkiascode.project", "Project.missing_keys", "    key stores: missing keys"),
    ("pkiascode.planner", "plan", "  planner.plan"),
    ("pkiascode.lint", "lint_plan", "  lint (pkilint over what the plan signs)"),
    ("pkiascode.project", "Project._remember_noop", "  remember the no-op (write noop.json)"),
    ("pkiascode.render", "render_text", "render_text"),
    ("pkiascode.project", "Project.close", "Project.close"),
    ("pkiascode.memo", "stamp_files", "stat stamps of state files (all calls)"),
    ("pkiascode_local", "LocalKeyStore.missing", "local key store: missing keys (all calls)"),
]


def main() -> int:
    out = run_cli("plan", sys.argv[1:] or ["--detailed-exitcode"], PHASES)
    sys.stdout.flush()
    print("\nPLAN-PHASES " + json.dumps(out))
    return 0  # the exit code of pki plan is in the JSON


if __name__ == "__main__":
    sys.exit(main())
