"""`peft-bench figures`: the figure registry."""

from __future__ import annotations


def add(sub) -> None:
    fig = sub.add_parser("figures", help="every figure a record holds: unit, rule, definition (the figure registry)")
    fig.add_argument("--markdown", action="store_true", help="docs/measurement.md's tables")
    fig.set_defaults(func=command)


def command(args) -> int:
    from bench import figures, judging

    if args.markdown:
        print("\n\n".join([f"## {s}\n\n{figures.markdown_table(s)}" for s in figures.SECTIONS]
                          + [f"## How a change is judged\n\n{judging.rules_table()}"]))
        return 0
    for f in figures.FIGURES.values():
        print(f"{f.key:<42} {f.unit:<9} {f.rule:<10} {f.definition.split('. ')[0].rstrip('.')}")
    return 0
