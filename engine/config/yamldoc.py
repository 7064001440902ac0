"""Parse YAML text into plain values while remembering where each value was.

`yaml.safe_load` forgets line numbers, and a config error must name the line.
This composes the node tree with the safe loader, builds plain dicts, lists
and scalars from it, and records the line of every key path on the way.
`${VAR}` and `${VAR:-default}` in string scalars are replaced from the
environment here, so every later step sees final values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from sqlwarden.errors import ConfigError
from sqlwarden.redact import is_secret_key

#: A key path: mapping keys and sequence indexes from the document root.
KeyPath = tuple[str | int, ...]

_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def format_path(path: KeyPath) -> str:
    """Render a key path as `tables.registry.indexes[0].columns`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class Document:
    """Plain values parsed from YAML, with the line of every key path."""

    file: str
    value: Any
    lines: Mapping[KeyPath, int]
    #: Values taken from the environment for keys that look like secrets.
    secrets: frozenset[str] = field(default=frozenset(), repr=False)

    def line_of(self, path: KeyPath) -> int | None:
        """Line of `path`, or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def error(self, path: KeyPath, message: str) -> ConfigError:
        """A `ConfigError` at `path` in this document."""
        return ConfigError(message, file=self.file, line=self.line_of(path),
                           path=format_path(path))


def parse_yaml(text: str, *, file: str, environ: Mapping[str, str] | None = None) -> Document:
    """Parse `text` (named `file` in errors) into a `Document`."""
    env = os.environ if environ is None else environ
    try:
        # The reader checks the text's characters as it is made (a NUL, say).
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = exc.problem or exc.context or "invalid YAML"
            raise ConfigError(f"invalid YAML: {problem}", file=file, line=line) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", file=file) from None
        builder = _Builder(loader, file, env)
        value = builder.build(root, ()) if root is not None else None
        return Document(file=file, value=value, lines=builder.lines,
                        secrets=frozenset(builder.secrets))
    finally:
        loader.dispose()


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, file: str, env: Mapping[str, str]) -> None:
        self.loader = loader
        self.file = file
        self.env = env
        self.lines: dict[KeyPath, int] = {}
        self.secrets: set[str] = set()

    def fail(self, node: yaml.Node, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=node.start_mark.line + 1,
                           path=format_path(path))

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        # A mapping entry keeps the line of its key, where a reader looks for it.
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node) if isinstance(
                key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(key_node, path, "keys must be plain strings")
            if key in out:
                raise self.fail(key_node, (*path, key), "duplicate key")
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, (*path, key))
        return out

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        value = self.loader.construct_object(node)
        if not isinstance(value, str) or "$" not in value:
            return value
        whole_reference = _REFERENCE.fullmatch(value) is not None and value != "$$"
        expanded = self._interpolate(node, path, value)
        key = path[-1] if path else ""
        if expanded != value and isinstance(key, str) and is_secret_key(key) and expanded:
            self.secrets.add(expanded)
        if whole_reference and getattr(node, "style", None) is None:
            # `port: ${PORT}` should give an int, as `port: 8080` would.
            return _resolve_plain(expanded)
        return expanded

    def _interpolate(self, node: yaml.Node, path: KeyPath, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            value = self.env.get(name, default)
            if value is not None:
                # `dsn: mysql://u:${DB_PASSWORD}@h/db`: the variable's name marks the
                # secret inside a value whose key does not.
                if value and is_secret_key(name):
                    self.secrets.add(value)
                return value
            raise self.fail(node, path, f"environment variable {name} is not set "
                                        f"(use ${{{name}:-default}} to give a default)")

        return _REFERENCE.sub(replace, text)


def _resolve_plain(text: str) -> Any:
    """Type a string the way YAML types a plain scalar (`8080` -> int)."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text
