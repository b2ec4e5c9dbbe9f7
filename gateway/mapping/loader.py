"""Load a mapping file: YAML to plain data, keeping every node's line mark for error messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a mapping file, rendered as FILE:LINE:COL: dotted.path: message."""

    file: str
    mark: Mark | None
    path: Loc
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.mark.line}:{self.mark.column}" if self.mark else f"{self.file}:1:1"
        dotted = dotted_path(self.path)
        return f"{where}: {dotted}: {self.message}" if dotted else f"{where}: {self.message}"


def dotted_path(path: Loc) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class MappingFileError(Exception):
    """A mapping file that cannot be used; `problems` lists everything found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(slots=True)
class Document:
    file: str
    data: Any
    marks: dict[Loc, Mark]  # where each value starts
    key_marks: dict[Loc, Mark]  # where each mapping key starts

    def mark(self, path: Loc, *, at_key: bool = False) -> Mark | None:
        """The mark of the deepest node on `path` that exists (a missing key points at its parent)."""
        if at_key and path in self.key_marks:
            return self.key_marks[path]
        while True:
            if path in self.marks:
                return self.marks[path]
            if not path:
                return None
            path = path[:-1]

    def problem(self, path: Loc, message: str, *, at_key: bool = False) -> Problem:
        return Problem(self.file, self.mark(path, at_key=at_key), path, message)


# libyaml's parser where PyYAML has it (the same nodes and marks, several times faster); a file it refuses is
# parsed again by the pure-Python one, whose messages are the ones documented.
_FAST_COMPOSER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _build(
    node: yaml.Node, path: Loc, marks: dict[Loc, Mark], key_marks: dict[Loc, Mark], problems: list[str], loader: yaml.SafeLoader
) -> Any:
    """Plain data from the node tree, recording each value's and key's mark; duplicate and non-string keys are problems."""
    marks[path] = Mark(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                problems.append(f"{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}: keys must be strings")
                continue
            if key in out:
                problems.append(f"{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}: duplicate key {key!r}")
                continue
            key_marks[(*path, key)] = Mark(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, (*path, key), marks, key_marks, problems, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), marks, key_marks, problems, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, file: str) -> Document:
    """Parse YAML text into plain data plus line marks; raises MappingFileError on syntax errors."""
    try:
        try:
            root = yaml.compose(text, Loader=_FAST_COMPOSER)
        except yaml.YAMLError:
            root = yaml.compose(text, Loader=yaml.SafeLoader)  # raises, with the pure-Python parser's message
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        problem = Problem(
            file,
            Mark(mark.line + 1, mark.column + 1) if mark else None,
            (),
            f"invalid YAML: {exc.problem}",
        )
        raise MappingFileError([problem]) from None
    marks: dict[Loc, Mark] = {}
    if root is None:
        raise MappingFileError([Problem(file, Mark(1, 1), (), "the file is empty")])
    syntax: list[str] = []
    key_marks: dict[Loc, Mark] = {}
    data = _build(root, (), marks, key_marks, syntax, yaml.SafeLoader(""))
    if syntax:
        problems = []
        for text_problem in syntax:
            line, col, message = text_problem.split(":", 2)
            problems.append(Problem(file, Mark(int(line), int(col)), (), message.strip()))
        raise MappingFileError(problems)
    return Document(file, data, marks, key_marks)


def read_document(path: Path) -> Document:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise MappingFileError([Problem(str(path), None, (), f"cannot read the file: {exc.strerror}")]) from None
    return parse_yaml(text, str(path))
