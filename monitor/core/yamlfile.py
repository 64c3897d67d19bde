"""YAML loading that remembers where each key was written, for error messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration source, located as precisely as we can."""

    source: str
    line: int | None
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key or '(top level)'}: {self.reason}"


class ConfigError(Exception):
    """A configuration was refused; carries every problem found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class LoadedYaml:
    """Parsed YAML data plus the line of every key path."""

    data: Any
    lines: dict[KeyPath, int]
    source: str
    text: str

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the deepest key of `path` that exists in the file."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(path[:cut])
            if line is not None:
                return line
        return None


def _index_lines(node: yaml.Node, path: KeyPath, out: dict[KeyPath, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _index_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), out)


def parse_yaml(text: str, source: str) -> LoadedYaml:
    """Parse YAML text; syntax errors become a ConfigError with the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = str(getattr(exc, "problem", None) or exc)
        raise ConfigError([ConfigProblem(source, line, "", f"invalid YAML: {reason}")]) from exc
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return LoadedYaml(data if data is not None else {}, lines, source, text)


def load_yaml(path: Path) -> LoadedYaml:
    """Read and parse a YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), None, "", f"cannot read: {exc}")]) from exc
    return parse_yaml(text, str(path))


def problems_from_validation(
    exc: ValidationError, loaded: LoadedYaml | None, source: str
) -> list[ConfigProblem]:
    """Turn pydantic errors into located problems."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = loaded.line_of(loc) if loaded is not None else None
        key = ".".join(str(p) for p in loc)
        out.append(ConfigProblem(source, line, key, err["msg"]))
    return out
