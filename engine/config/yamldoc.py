"""Parse YAML text into plain values while remembering where each value was.

`yaml.safe_load` forgets line numbers, and a config error must name the line.
This composes the node tree with the safe loader, builds plain dicts, lists
and scalars from it, and records the line of every key path on the way.
`${VAR}` and `${VAR:-default}` in string scalars are replaced from the
environment here, so every later step sees final values.

A config is input the engine did not write, so what it may cost is bounded:
nesting deeper than `MAX_DEPTH` levels is refused while the tree is composed
(the composer recurses once per level), and the plain values built may number
at most `MAX_VALUES`, so aliases that repeat each other (a "billion laughs")
are refused at once instead of expanding. An alias inside the node it names
(a recursive structure) is refused; merge keys (`<<: *base`) are supported,
keys written beside them winning.
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

#: The deepest nesting of mappings and lists a config may have.
MAX_DEPTH = 64
#: The most values (scalars, lists, mappings, aliases expanded) a config may hold.
MAX_VALUES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"

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
        loader = _Loader(text)
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
        except _TooDeep as exc:
            raise ConfigError(f"nesting deeper than {MAX_DEPTH} levels is not allowed",
                              file=file, line=exc.line) from None
        builder = _Builder(loader, file, env)
        value = builder.build(root, ()) if root is not None else None
        return Document(file=file, value=value, lines=builder.lines,
                        secrets=frozenset(builder.secrets))
    finally:
        loader.dispose()


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line
        super().__init__(line)


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing nesting past `MAX_DEPTH` before its composer recurses."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, file: str, env: Mapping[str, str]) -> None:
        self.loader = loader
        self.file = file
        self.env = env
        self.lines: dict[KeyPath, int] = {}
        self.secrets: set[str] = set()
        #: Values built so far (an alias counts each time it is expanded).
        self.values = 0
        #: The collections being built, outermost first: an alias to one is a cycle.
        self.open: set[int] = set()

    def fail(self, where: yaml.Node | int, path: KeyPath, message: str) -> ConfigError:
        """An error at `path`, on the line of node `where` (or line `where`)."""
        line = where if isinstance(where, int) else where.start_mark.line + 1
        return ConfigError(message, file=self.file, line=line, path=format_path(path))

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        # A mapping entry keeps the line of its key, where a reader looks for it.
        line = self.lines.setdefault(path, node.start_mark.line + 1)
        self.values += 1
        if self.values > MAX_VALUES:
            raise self.fail(line, path, f"the config holds more than {MAX_VALUES:,} values "
                                        "(aliases count each time they are used)")
        if len(path) > MAX_DEPTH:  # aliases can nest what the composer saw shallow
            raise self.fail(line, path, f"nesting deeper than {MAX_DEPTH} levels is not "
                                        "allowed")
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return self._scalar(node, path)
        if id(node) in self.open:
            # The line of the entry holding the alias (the node itself starts at its anchor).
            raise self.fail(line, path, "an alias refers to a mapping or list that holds it "
                                        "(a recursive structure is not allowed)")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append((key_node, value_node))
                continue
            key = self._construct(key_node, path) if isinstance(
                key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(key_node, path, "keys must be plain strings")
            if key in out:
                raise self.fail(key_node, (*path, key), "duplicate key")
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, (*path, key))
        for key_node, value_node in merges:
            self._merge(out, key_node, value_node, path)
        return out

    def _merge(self, out: dict[str, Any], key_node: yaml.Node, value_node: yaml.Node,
               path: KeyPath) -> None:
        """`<<: *base` or `<<: [*a, *b]`: keys not written here come from the mappings
        named, the first one naming a key winning, as YAML's merge key specifies."""
        named = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in named:
            if not isinstance(source, yaml.MappingNode):
                raise self.fail(key_node, path, "a merge key (<<) takes a mapping or a list of "
                                                "mappings")
            # Built with lines of its own: a key written here keeps the line it has here.
            lines, self.lines = self.lines, {}
            try:
                merged = self.build(source, path)
            finally:
                built, self.lines = self.lines, lines
            for key, value in merged.items():
                if key not in out:
                    out[key] = value
                    for where, line in built.items():
                        if where[len(path):len(path) + 1] == (key,):
                            self.lines.setdefault(where, line)

    def _construct(self, node: yaml.Node, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            problem = exc.problem or exc.context or "invalid YAML"
            raise self.fail(node, path, f"invalid YAML: {problem}") from None
        except (ValueError, OverflowError) as exc:  # a timestamp such as 2024-99-99
            raise self.fail(node, path, f"invalid YAML value: {exc}") from None

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        value = self._construct(node, path)
        if not isinstance(value, str) or "$" not in value:
            return value
        whole_reference = _REFERENCE.fullmatch(value) is not None and value != "$$"
        expanded = self._interpolate(node, path, value)
        key = path[-1] if path else ""
        if expanded != value and isinstance(key, str) and is_secret_key(key) and expanded:
            self.secrets.add(expanded)
        if whole_reference and getattr(node, "style", None) is None:
            # `port: ${PORT}` should give an int, as `port: 8080` would.
            return self._resolve_plain(expanded)
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

    def _resolve_plain(self, text: str) -> Any:
        """Type a string the way YAML types a plain scalar (`8080` -> int), never deeper:
        the resolver picks the scalar's tag, so `[[[...` from the environment stays text."""
        if text == "":
            return ""
        tag = self.loader.resolve(yaml.ScalarNode, text, (True, False))
        try:
            value = self.loader.construct_object(yaml.ScalarNode(tag, text))
        except (yaml.YAMLError, ValueError, OverflowError):
            return text
        return value if isinstance(value, (str, int, float, bool)) or value is None else text
