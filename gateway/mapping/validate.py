"""Step 2 of loading a mapping: the parsed document against the mapping models and its connector's own model.

Pydantic's errors come back as problems at the document's line marks, an unknown key with its near miss
and the valid keys (FILE:LINE:COL: dotted.path: unknown key 'feild' (did you mean field?) (valid: ...)).
"""

from __future__ import annotations

import copy
import difflib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError

from ..connectors.base import Connector
from ..connectors.registry import ConnectorRegistry
from .loader import Document, Loc, Problem
from .model import MappingConfig


def _unwrap(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def _tags(member: Any) -> set[str]:
    """The tags pydantic names a member of a tagged union by in an error's location: Tag(...), or its `type` literal."""
    tags = {m.tag for m in get_args(member)[1:] if isinstance(m, Tag)} if get_origin(member) is Annotated else set()
    inner = _unwrap(member)
    if isinstance(inner, type) and issubclass(inner, BaseModel) and "type" in inner.model_fields:
        tags.update(str(a) for a in get_args(inner.model_fields["type"].annotation))
    return tags


def _walk(model: type[BaseModel], loc: Loc) -> tuple[Loc, Any]:
    """`loc` without the union tags pydantic puts in it (`pagination.page.pag_param` is `pagination.pag_param`
    in the file), and the annotation of what it names."""
    current: Any = model
    kept: list[str | int] = []
    for i, part in enumerate(loc):
        union = _unwrap(current)
        if get_origin(union) in (Union, types.UnionType):
            chosen = next((m for m in get_args(union) if str(part) in _tags(m)), None)
            if chosen is not None:
                current = chosen  # the tag picks the member: no key of the file
                continue
        current = _unwrap(current)
        kept.append(part)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = _field(current, str(part))
            if info is None:
                return (*kept, *loc[i + 1 :]), None
            current = info.annotation
        elif get_origin(current) in (list, dict):
            current = get_args(current)[-1]
        else:
            current = None
    return tuple(kept), current


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The valid keys of the object at `loc` (for 'valid: ...' and 'did you mean')."""
    current = _unwrap(_walk(model, loc)[1])
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _field(model: type[BaseModel], key: str) -> Any:
    """The field a key of the file names: by its name or its alias (`in` for `in_`)."""
    return model.model_fields.get(key) or next((f for f in model.model_fields.values() if f.alias == key), None)


def validation_problems(exc: ValidationError, model: type[BaseModel], doc: Document, prefix: Loc = ()) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        raw = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = _walk(model, raw)[0]
        path = (*prefix, *loc)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            valid = _fields_at(model, raw[:-1])
            message = f"unknown key {loc[-1]!r}"
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            if near:
                message += f" (did you mean {near[0]}?)"
            if valid:
                message += f" (valid: {', '.join(valid)})"
        elif error["type"] == "model_type" and (error.get("ctx") or {}).get("class_name") == "SecretRef":
            message = "a secret is given by reference, never inline: {env: NAME} or {file: PATH}"
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
        problems.extend(validation_problems(exc, MappingConfig, doc))
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
                problems.extend(validation_problems(exc, connector_cls.Config, doc, ("connector",)))
    return config, connector_config, connector_cls, problems


__all__ = ["validate_document", "validation_problems"]
