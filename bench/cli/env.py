"""`peft-bench env`: the installed package versions against the lock."""

from __future__ import annotations

import json


def add(sub) -> None:
    env = sub.add_parser("env", help="the installed package versions against requirements-lock.txt")
    env.add_argument("--differs", action="store_true", help="print only the packages that differ from the lock")
    env.add_argument("--check-lock", action="store_true", help="exit 1 unless every locked version is installed")
    env.add_argument("--json", action="store_true", help="machine-readable output, every installed version")
    env.set_defaults(func=command)


def command(args) -> int:
    from bench.env import LOCK_FILE, lock_state

    state = lock_state()
    if args.json:
        print(json.dumps(state, indent=1))
    elif not args.differs:
        where = LOCK_FILE.name if state["status"] != "unknown" else "no lock file"
        print(f"environment: {state['status']} ({where}), {len(state['packages'])} packages, "
              f"sha256 {state['sha256'][:16]}")
    for name, v in state["differs"].items():
        if not args.json:
            print(f"  {name}: locked {v['locked']}, installed {v['installed'] or 'nothing'}")
    return 1 if args.check_lock and state["status"] != "locked" else 0
