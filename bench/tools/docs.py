"""Rewrite the docs' tables that the figure registry generates (`make docs`).

    python -m bench.tools.docs [DOCS_DIR]

docs/measurement.md: one table per record section and the rules table. Each table is replaced where it stands
(found by its header row); the prose around it stays. A new figure changes this one file of the docs.
tests/test_figures.py fails while a table differs from the registry.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench import figures, judging

SECTION_HEADER = "| figure | unit | rule | definition |"
RULES_HEADER = "| rule | figures | how a change is judged |"


def replace_table(text: str, header: str, table: str, after: str = "") -> str:
    """`text` with the table whose header row is `header` (the first after `after`) replaced by `table`."""
    start = text.index(header, text.index(after) if after else 0)
    end = text.find("\n\n", start)
    return text[:start] + table + (text[end:] if end != -1 else "\n")


def main(argv: list[str] | None = None) -> int:
    docs = Path((argv or sys.argv[1:] or ["docs"])[0])
    measurement = (docs / "measurement.md").read_text()
    for section in figures.SECTIONS:
        measurement = replace_table(measurement, SECTION_HEADER, figures.markdown_table(section), f"## {section}")
    measurement = replace_table(measurement, RULES_HEADER, judging.rules_table())
    (docs / "measurement.md").write_text(measurement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
