"""Tasks: YAML definitions (bench/tasks/defs/*.yaml, or a suite's `task_files`).

A definition names its data source (pinned hub dataset, local files or a synthetic generator), the
columns to read, how labels map to names, the prompts text-to-text models see (one or several
templates, each with its answer options), and its metrics. A classification task from a CSV needs
only YAML. Columns may be nested (`translation.ro`); templates use Python format syntax
(`{translation[en]}`).

spec.py (TaskSpec, Prompt), schema.py (a definition file's keys and checks), registry.py (built-in and a suite's
tasks), data.py (rows from the hub, files or a generator), features.py (rows -> token ids), metrics.py.
"""
