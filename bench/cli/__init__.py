"""Command line: parse, then call the command's module; one module per subcommand, each with `add(sub)` (its
flags) and `command(args)`.

Exit codes: 0 success (failed cells are data: still 0, and counted), 2 bad input, 1 unexpected error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.errors import BadInput

# bench/cli/<module>.py, in `--help`'s order (`eval` is eval_adapter.py, `list` listing.py)
COMMANDS = ("run", "eval_adapter", "report", "compare", "regress", "results", "listing", "estimate", "figures",
            "cache", "env")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peft-bench", description="Compare parameter-efficient fine-tuning methods.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"bench.cli.{name}").add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BadInput as e:
        print(f"error: {e.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; records written so far are kept. Run the same command again to resume: "
              "recorded cells are skipped, the interrupted one runs again.", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so, with the traceback
        import traceback

        traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
