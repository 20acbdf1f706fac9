"""YAML that remembers the line of every value, so validation errors can say file:line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BadInput

Key = tuple[Any, ...]


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
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise BadInput(f"cannot read file: {e.strerror}", path) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Key, int] = {}
        data = _convert(loader, node, (), lines, path) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise BadInput(f"malformed YAML: {e.problem or e.context}", f"{path}:{line}") from None
    finally:
        loader.dispose()
    return YamlDoc(path, data, lines)


def _convert(loader: yaml.SafeLoader, node: yaml.Node, key: Key, lines: dict[Key, int], path: str) -> Any:
    lines[key] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            k = loader.construct_object(k_node, deep=True)
            if k in out:
                raise BadInput(f"duplicate key '{k}'", f"{path}:{k_node.start_mark.line + 1}")
            out[k] = _convert(loader, v_node, key + (k,), lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, v, key + (i,), lines, path) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
