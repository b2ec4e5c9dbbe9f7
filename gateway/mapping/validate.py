"""Step 2 of loading a mapping: the parsed document against the mapping models and its connector's own model.

Pydantic's errors come back as problems at the document's line marks, an unknown key with its near miss
and the valid keys (FILE:LINE:COL: dotted.path: unknown key 'feild' (did you mean field?) (valid: ...)).
"""

from __future__ import annotations

import copy
import difflib
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ..connectors.base import Connector
from ..connectors.registry import ConnectorRegistry
from .loader import Document, Loc, Problem
from .model import MappingConfig


def _unwrap(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The valid keys of the object at `loc` (for 'valid: ...' and 'did you mean')."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
        elif get_origin(current) in (list, dict):
            current = get_args(current)[-1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _validation_problems(exc: ValidationError, model: type[BaseModel], doc: Document, prefix: Loc = ()) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = (*prefix, *loc)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            message = f"unknown key {loc[-1]!r}"
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            if near:
                message += f" (did you mean {near[0]}?)"
            if valid:
                message += f" (valid: {', '.join(valid)})"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        problems.append(doc.problem(path, message, at_key=error["type"] == "extra_forbidden"))
    return problems


def validate_document(
    doc: Document, registry: ConnectorRegistry
) -> tuple[MappingConfig | None, BaseModel | None, type[Connector] | None, list[Problem]]:
    """Step 2: the document against the mapping models and its connector's own model."""
    problems: list[Problem] = []
    if not isinstance(doc.data, dict):
        return None, None, None, [doc.problem((), "a mapping file must be a YAML mapping (key: value)")]
    source = copy.deepcopy(doc.data)  # validation must never mutate the caller's data
    config = None
    try:
        config = MappingConfig.model_validate(source)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, MappingConfig, doc))
    connector_block = doc.data.get("connector")
    connector_cls = connector_config = None
    if isinstance(connector_block, dict) and isinstance(connector_block.get("type"), str):
        try:
            connector_cls = registry.get(connector_block["type"])
        except LookupError as exc:
            problems.append(doc.problem(("connector", "type"), str(exc)))
        else:
            try:
                connector_config = connector_cls.Config.model_validate(copy.deepcopy(connector_block))
            except ValidationError as exc:
                problems.extend(_validation_problems(exc, connector_cls.Config, doc, ("connector",)))
    return config, connector_config, connector_cls, problems


__all__ = ["validate_document"]
