"""Assignment rules, compiled from the hub file: which apps a hub user or group belongs in.

A user is assigned to an app when any of its rule's parts holds: everyone, membership in a named hub group, or
the `when` expression. A group is pushed to an app as the rule's `groups` says. Rules see the stored copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from ..mapping.compile import TemplateError, Transform
from ..schema import ENTERPRISE_USER, user_resource_type

log = logging.getLogger(__name__)


@cache
def _attribute_names() -> dict[str, None]:
    rtype = user_resource_type()
    names = {a.name: None for a in rtype.schema.attributes}
    for schema, _required in rtype.extensions:
        names.update({a.name: None for a in schema.attributes})
    return names


def user_view(data: dict[str, Any]) -> dict[str, Any]:
    """What `when` sees as `user`: every core and enterprise attribute (None when absent), the extension's flattened in."""
    view: dict[str, Any] = dict(_attribute_names())
    ext = data.get(ENTERPRISE_USER)
    if isinstance(ext, dict):
        view.update(ext)
    view.update({k: v for k, v in data.items() if not k.startswith("urn:")})
    return view


@dataclass(frozen=True, slots=True)
class AppRule:
    app: str
    everyone: bool
    member_of: frozenset[str]  # lower-cased displayNames
    when: Transform | None
    groups: Literal["all", "none"] | frozenset[str]
    leave: str

    def user_assigned(self, data: dict[str, Any], group_keys: set[str]) -> bool:
        if self.everyone or (self.member_of & group_keys):
            return True
        if self.when is None:
            return False
        try:
            return bool(self.when(user=user_view(data)))
        except TemplateError as exc:
            log.warning("hub: app %s: the `when` rule failed on user %r: %s; not assigned", self.app, data.get("userName"), exc)
            return False

    def group_pushed(self, data: dict[str, Any]) -> bool:
        if self.groups == "all":
            return True
        if self.groups == "none":
            return False
        name = data.get("displayName")
        return isinstance(name, str) and name.lower() in self.groups


@dataclass(frozen=True, slots=True)
class Rules:
    apps: dict[str, AppRule]

    def assigned(self, app: str, kind: str, data: dict[str, Any], group_keys: set[str]) -> bool:
        rule = self.apps.get(app)
        if rule is None:
            return False
        return rule.user_assigned(data, group_keys) if kind == "User" else rule.group_pushed(data)

    def route(self, kind: str, data: dict[str, Any], group_keys: set[str]) -> set[str]:
        """The apps a resource belongs in (the store's Router)."""
        return {app for app in self.apps if self.assigned(app, kind, data, group_keys)}


__all__ = ["AppRule", "Rules", "user_view"]
