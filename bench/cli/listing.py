"""`peft-bench list`: methods, models, tasks or suites."""

from __future__ import annotations

import json


def add(sub) -> None:
    lst = sub.add_parser("list", help="list methods, models, tasks or suites")
    lst.add_argument("what", choices=["methods", "models", "tasks", "suites"])
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=command)


def command(args) -> int:
    from bench import methods, models
    from bench.plan import suite
    from bench.tasks.registry import builtin_tasks

    if args.what == "methods":
        entries = [m.describe() for m in methods.REGISTRY.values()]
        lines = [f"{e['name']:<18} {e['family']:<16} {e['description']}" for e in entries]
    elif args.what == "models":
        entries = models.describe()
        lines = [f"{e['name']:<18} {e['kind']:<16} {e['description']}" for e in entries]
    elif args.what == "tasks":
        entries = [t.describe() for t in builtin_tasks().values()]
        lines = [f"{e['name']:<18} {e['type']:<16} {e['description']}" for e in entries]
    else:
        entries = []
        for name, path in suite.suite_names().items():
            s = suite.load_suite(str(path))
            entries.append({"name": name, "path": str(path), "description": s.description})
        lines = [f"{e['name']:<18} {e['description']}" for e in entries]
    print(json.dumps(entries, indent=1, default=str) if args.json else "\n".join(lines))
    return 0
