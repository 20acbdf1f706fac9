"""YAML that remembers the line of every value, so validation errors can say file:line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BadInput

Key = tuple[Any, ...]
MAX_VALUES = 200_000  # values a suite, task or tolerance file may hold once its aliases are expanded


@dataclass
class YamlDoc:
    path: str
    data: Any
    lines: dict[Key, int] = field(default_factory=dict)

    def where(self, *keys: Any) -> str:
        """'file:line' of the value at `keys`, or of its nearest recorded parent."""
        keys = tuple(keys)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return f"{self.path}:{self.lines.get(keys, 1)}"


def load_yaml(path: str | Path, text: str | None = None) -> YamlDoc:
    path = str(path)
    if text is None:
        text = read_text(path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Key, int] = {}
        data = _convert(loader, node, (), lines, path, [0]) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise BadInput(f"malformed YAML: {e.problem or e.context}", f"{path}:{line}") from None
    finally:
        loader.dispose()
    return YamlDoc(path, data, lines)


def read_text(path: str | Path) -> str:
    """A text file's content as UTF-8 (a BOM allowed), or BadInput naming the file and where decoding failed."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"cannot read file: {e.strerror}", str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise BadInput(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): save the file as UTF-8",
                       f"{path}:{line}") from None


def _convert(loader: yaml.SafeLoader, node: yaml.Node, key: Key, lines: dict[Key, int], path: str,
             budget: list[int]) -> Any:
    lines[key] = node.start_mark.line + 1
    # An alias is the same node met again, expanded each time: aliases of aliases grow exponentially (a 500-byte
    # "billion laughs" file took gigabytes). The shipped task files alias a few template lists; no suite or task
    # file comes near MAX_VALUES values once expanded.
    budget[0] += 1
    if budget[0] > MAX_VALUES:
        raise BadInput(f"the YAML expands past {MAX_VALUES:,} values (aliases of aliases?): refused",
                       f"{path}:{node.start_mark.line + 1}")
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            k = loader.construct_object(k_node, deep=True)
            if k in out:
                raise BadInput(f"duplicate key '{k}'", f"{path}:{k_node.start_mark.line + 1}")
            out[k] = _convert(loader, v_node, key + (k,), lines, path, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, v, key + (i,), lines, path, budget) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
