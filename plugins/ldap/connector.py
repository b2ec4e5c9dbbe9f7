"""The LDAP connector: app records are directory entries (OpenLDAP, Active Directory), keyed by their stable UUID.

A record is the entry's attributes by name, one text value each (lists for `multi_valued` ones, base64 for
`binary` ones), DN-valued `references` as the referenced entries' native ids, and on Active Directory an
`enabled` field for the ACCOUNTDISABLE bit. The native id is entryUUID (OpenLDAP) or objectGUID (AD) as a
GUID string, never the DN: a rename or a move keeps the link.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import ldap3
from pydantic import BaseModel

from gateway.connectors.base import AppContext, Capabilities, Connector, NativeId, Record
from gateway.connectors.errors import AppError, AppInvalid, AppNotFound, ConnectorSetupError

from .client import (
    ALREADY_EXISTS,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT,
    OBJECT_CLASS,
    UNWILLING,
    VALUE_EXISTS,
    ClientOptions,
    Entry,
    LdapClient,
    LdapFailure,
    app_error,
)
from .config import LdapConnectorConfig, LdapResourceConfig
from .values import (
    ad_password,
    dn_key,
    filter_value,
    from_ldap,
    id_filter_value,
    id_to_text,
    parent_of,
    random_password,
    rdn,
    rdn_of,
    to_ldap,
    with_enabled,
)

log = logging.getLogger(__name__)

UAC = "userAccountControl"
MASK = "***"
_CHUNK = 50  # values per (|(...)(...)) lookup
# What a directory answers for adding a member already there (AD: entryAlreadyExists) or removing one not there.
_PRESENT = frozenset({VALUE_EXISTS, ALREADY_EXISTS})
_ABSENT = frozenset({NO_SUCH_ATTRIBUTE, UNWILLING})


class LdapSetupError(ConnectorSetupError):
    pass


class LdapConnector(Connector):
    Config: ClassVar[type[LdapConnectorConfig]] = LdapConnectorConfig
    # The most any configuration can do; what one can do is capabilities_for(config).
    capabilities: ClassVar[Capabilities] = Capabilities(
        membership=True,
        search=True,
        search_ops=frozenset({"eq", "co", "sw", "ew", "pr"}),
        list_all=True,
        actions=frozenset({"disable", "enable"}),
    )
    config: LdapConnectorConfig

    def __init__(self, config: LdapConnectorConfig, context: AppContext) -> None:
        super().__init__(config, context)
        self.client: LdapClient | None = None
        self.ad = config.directory == "active_directory"
        self.id_attribute = "objectGUID" if self.ad else "entryUUID"
        # The attribute that names an entry's DN in a filter (to find many members by DN at once).
        self.dn_attribute = "distinguishedName" if self.ad else "entryDN"
        self.dns = _DnCache()
        self._schema: Any = None  # the server's subschema, once check_schema read it
        self.encrypted = False  # whether the connection is (ldaps://, StartTLS): set by open()

    @classmethod
    def capabilities_for(cls, config: BaseModel) -> Capabilities:
        assert isinstance(config, LdapConnectorConfig)
        return Capabilities(
            membership=any(r.members is not None for r in config.resources.values()),
            search=True,
            search_ops=frozenset({"eq", "co", "sw", "ew", "pr"}),
            list_all=True,
            read=True,
            actions=frozenset({"disable", "enable"}) if config.directory == "active_directory" else frozenset(),
        )

    # ------------------------------------------------------------------ lifetime

    async def open(self) -> None:
        cfg = self.config
        try:
            password = cfg.bind_password.resolve().get_secret_value()
        except ValueError as exc:
            raise LdapSetupError(f"bind_password: {exc}") from None
        try:
            url = cfg.resolved_url()
        except ValueError as exc:
            raise LdapSetupError(f"url: {exc}") from None
        self.encrypted = cfg.encrypted(url)
        if self.ad and cfg.active_directory.password_field and not self.encrypted:
            log.warning(
                "%s: passwords can only be set over an encrypted connection: use ldaps:// or start_tls", self.context.name
            )
        options = ClientOptions(
            url,
            cfg.bind_dn,
            password,
            cfg.start_tls,
            cfg.ca_file,
            cfg.verify_hostname,
            cfg.pool_size,
            cfg.timeout,
            self.context.name,
        )
        client = LdapClient(options)
        await client.open()
        self.client = client

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    @property
    def ldap(self) -> LdapClient:
        if self.client is None:
            raise AppError("the directory connection is not open")
        return self.client

    def resource(self, kind: str) -> LdapResourceConfig:
        try:
            return self.config.resources[kind]
        except KeyError:
            raise AppInvalid(f"no {kind} entries are configured (valid: {', '.join(self.config.resources)})") from None

    # ------------------------------------------------------------------ entries <-> records

    def _kind_filter(self, r: LdapResourceConfig, *terms: str) -> str:
        classes = "".join(f"(objectClass={filter_value(c)})" for c in r.object_classes)
        return f"(&{classes}{r.filter or ''}{''.join(terms)})"

    def _attributes(self, r: LdapResourceConfig) -> list[str]:
        return ["*", self.id_attribute]  # every user attribute, and the id (operational on OpenLDAP)

    async def _record(self, kind: str, entry: Entry) -> tuple[NativeId, Record]:
        r = self.resource(kind)
        binary = {b.lower() for b in r.binary}
        multi = {m.lower() for m in r.multi_valued}
        skip = {self.id_attribute.lower(), "objectclass", "unicodepwd", (r.members.attribute.lower() if r.members else "")}
        record: Record = {}
        for name, values in entry.attributes.items():
            base = name.split(";", 1)[0]
            if base.lower() in skip:
                continue
            record[base] = from_ldap(values, binary=base.lower() in binary, multi=base.lower() in multi)
        for attribute, target in r.references.items():
            name = next((k for k in record if k.lower() == attribute.lower()), attribute)
            dns = [v.decode("utf-8") for v in entry.get(attribute)]
            natives = await self._natives_of_dns(target, dns)
            record[name] = natives if attribute.lower() in multi else (natives[0] if natives else None)
        if self.ad and self.config.active_directory.enabled_field and entry.get(UAC):
            record[self.config.active_directory.enabled_field] = not int(entry.get(UAC)[0]) & 0x2
        native_id = id_to_text(entry.get(self.id_attribute)[0], self.config.directory)
        self.dns.put(kind, native_id, entry.dn)
        return native_id, record

    async def _values(self, kind: str, record: Record) -> dict[str, list[bytes | str]]:
        """The LDAP values of a record's fields (references translated to DNs, AD's password encoded)."""
        r = self.resource(kind)
        ad = self.config.active_directory
        binary = {b.lower() for b in r.binary}
        out: dict[str, list[bytes | str]] = {}
        for field, value in record.items():
            if self.ad and field == ad.enabled_field:
                continue  # the ACCOUNTDISABLE bit: written with userAccountControl
            if self.ad and field == ad.password_field:
                if value not in (None, ""):
                    if not self.encrypted:
                        raise AppInvalid("a password can only be set over an encrypted connection (ldaps:// or start_tls)")
                    out["unicodePwd"] = [ad_password(str(value))]
                continue
            target = next((t for a, t in r.references.items() if a.lower() == field.lower()), None)
            if target is not None:
                natives = value if isinstance(value, list) else [value] if value not in (None, "") else []
                out[field] = [await self._dn(target, str(n)) for n in natives]
                continue
            try:
                out[field] = to_ldap(value, binary=field.lower() in binary)
            except ValueError:
                raise AppInvalid(f"{field}: not base64 data") from None
        return out

    async def _find_entry(self, kind: str, native_id: NativeId, attributes: list[str] | None = None) -> Entry | None:
        r = self.resource(kind)
        value = id_filter_value(native_id, self.config.directory)
        if value is None:
            return None
        found = await self.ldap.search(
            r.base,
            self._kind_filter(r, f"({self.id_attribute}={value})"),
            attributes or self._attributes(r),
            what=f"reading {kind} {native_id}",
        )
        return found[0] if found else None

    async def _dn(self, kind: str, native_id: NativeId) -> str:
        """The entry's DN now (AppNotFound when there is none)."""
        cached = self.dns.dn(kind, native_id)
        if cached is not None:
            return cached
        entry = await self._find_entry(kind, native_id, [self.id_attribute])
        if entry is None:
            raise AppNotFound(f"{kind} {native_id}")
        self.dns.put(kind, native_id, entry.dn)
        return entry.dn

    async def _on_entry(self, kind: str, native_id: NativeId, what: str, change: Any) -> str:
        """Run `change(dn)` on the entry; when the DN known for it is stale (moved elsewhere), find it again once."""
        for attempt in (1, 2):
            dn = await self._dn(kind, native_id)
            try:
                await change(dn)
                return dn
            except LdapFailure as failure:
                if failure.code == NO_SUCH_OBJECT and attempt == 1:
                    self.dns.drop(kind, native_id)
                    continue
                raise app_error(what, failure) from None
        raise AssertionError("unreachable")

    def _parent(self, r: LdapResourceConfig, record: Record) -> str:
        default = r.parent or r.base
        placement = r.placement
        if placement is None:
            return default
        value = next((v for k, v in record.items() if k.lower() == placement.field.lower()), None)
        wanted = str(value).lower() if value not in (None, "") else None
        parent = next((dn for key, dn in placement.parents.items() if key.lower() == wanted), None)
        return parent or placement.default or default

    # ------------------------------------------------------------------ records

    async def create(self, kind: str, record: Record) -> NativeId:
        return await self.create_with_members(kind, record, [])

    async def create_with_members(self, kind: str, record: Record, members: list[tuple[str, NativeId]]) -> NativeId:
        """One add: the entry with its first members (a groupOfNames cannot exist without one)."""
        r = self.resource(kind)
        naming = next((v for k, v in record.items() if k.lower() == r.rdn.lower()), None)
        if naming in (None, "", []):
            raise AppInvalid(f"{r.rdn} is required: it names the entry")
        dn = f"{rdn(r.rdn, str(naming[0] if isinstance(naming, list) else naming))},{self._parent(r, record)}"
        attributes: dict[str, Any] = {"objectClass": list(r.object_classes)}
        attributes |= {k: v for k, v in (await self._values(kind, record)).items() if v}
        if r.members is not None:
            values = await self._member_values(r, members)
            values = values or ([r.members.placeholder] if r.members.placeholder else [])
            if values:
                attributes[r.members.attribute] = values
        enabled = (
            record.get(self.config.active_directory.enabled_field)
            if self.ad and self.config.active_directory.enabled_field
            else None
        )
        if enabled is not None:
            # A new AD account is disabled; enabled here when asked (it needs its password in the same add).
            attributes[UAC] = [str(with_enabled(0x200, bool(enabled)))]
            if (
                enabled
                and "unicodePwd" not in attributes
                and self.config.active_directory.new_password == "random"
                and self.encrypted
            ):
                # Entra sends no password: AD refuses an enabled account without one under any password policy.
                # A random one no one knows (never kept, logged or shown); the user's first password is a reset.
                attributes["unicodePwd"] = [ad_password(random_password())]
        try:
            await self.ldap.write(f"creating {kind} {dn}", lambda conn: conn.add(dn, attributes=attributes))
        except LdapFailure as failure:
            raise app_error(f"creating {kind} {dn}", failure) from None
        found = await self.ldap.search(
            dn, "(objectClass=*)", [self.id_attribute], scope=ldap3.BASE, what=f"reading the new {kind} {dn}"
        )
        if not found or not found[0].get(self.id_attribute):
            raise AppError(f"creating {kind} {dn}: the new entry has no {self.id_attribute}")
        native_id = id_to_text(found[0].get(self.id_attribute)[0], self.config.directory)
        self.dns.put(kind, native_id, found[0].dn)
        return native_id

    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        entry = await self._find_entry(kind, native_id)
        return None if entry is None else (await self._record(kind, entry))[1]

    async def get_many(self, kind: str, native_ids: list[NativeId]) -> dict[NativeId, Record]:
        r = self.resource(kind)
        found: dict[NativeId, Record] = {}
        values = [v for n in native_ids if (v := id_filter_value(n, self.config.directory)) is not None]
        for i in range(0, len(values), _CHUNK):
            terms = "".join(f"({self.id_attribute}={v})" for v in values[i : i + _CHUNK])
            for entry in await self.ldap.search(
                r.base, self._kind_filter(r, f"(|{terms})"), self._attributes(r), what=f"reading {kind} entries"
            ):
                native_id, record = await self._record(kind, entry)
                found[native_id] = record
        return found

    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        r = self.resource(kind)
        changes = dict(changes)
        renamed = await self._renamed_names(kind, native_id, changes)
        old_dn = await self._dn(kind, native_id)
        dn = await self._move(kind, native_id, r, changes)
        if dn_key(dn) != dn_key(old_dn):
            await self._follow(kind, "dn", old_dn, dn)
        modifications: dict[str, list[tuple[str, list[Any]]]] = {
            attribute: [(ldap3.MODIFY_REPLACE, values)] for attribute, values in (await self._values(kind, changes)).items()
        }
        ad = self.config.active_directory
        if self.ad and ad.enabled_field and changes.get(ad.enabled_field) is not None:
            flags = await self._flags(kind, native_id)
            modifications[UAC] = [(ldap3.MODIFY_REPLACE, [str(with_enabled(flags, bool(changes[ad.enabled_field])))])]
        if modifications:
            # Deleting a value the entry does not have is harmless: REPLACE with no values clears, present or not.
            await self._on_entry(
                kind,
                native_id,
                f"updating {kind} {dn}",
                lambda entry_dn: self.ldap.write(
                    f"updating {kind} {entry_dn}", lambda conn: conn.modify(entry_dn, modifications)
                ),
            )
        for attribute, (old_name, new_name) in renamed.items():
            await self._follow(kind, attribute, old_name, new_name)

    def _name_attributes(self, kind: str) -> set[str]:
        """The attributes groups list entries of `kind` by (posixGroup's memberUid lists uids); none on AD."""
        if self.ad:
            return set()
        return {
            g.members.name_attribute
            for g in self.config.resources.values()
            if g.members is not None and g.members.values == "name" and g.members.member_kind == kind
        }

    async def _listed_names(self, kind: str, native_id: NativeId, only: set[str] | None = None) -> dict[str, str]:
        """The entry's current values of those attributes (of `only` among them)."""
        wanted = self._name_attributes(kind) if only is None else only
        if not wanted:
            return {}
        entry = await self._find_entry(kind, native_id, sorted(wanted))
        if entry is None:
            return {}
        return {a: entry.get(a)[0].decode("utf-8") for a in wanted if entry.get(a)}

    async def _renamed_names(self, kind: str, native_id: NativeId, changes: Record) -> dict[str, tuple[str, str]]:
        """The names groups list this entry by that the changes give a new value: old, new."""
        new_names: dict[str, str] = {}
        for attribute in self._name_attributes(kind):
            new = next((v for k, v in changes.items() if k.lower() == attribute.lower()), None)
            new = new[0] if isinstance(new, list) and new else new
            if new not in (None, "", []):
                new_names[attribute] = str(new)
        olds = await self._listed_names(kind, native_id, set(new_names))
        return {a: (olds[a], new) for a, new in new_names.items() if a in olds and olds[a] != new}

    async def _follow(self, kind: str, by: str, old: str, new: str) -> None:
        """An entry renamed or moved: the groups listing it, and the entries referring to it, name it anew.

        Active Directory keeps its linked attributes (member, manager) right itself; OpenLDAP does only with the
        refint overlay, and where that overlay did it first the search below finds nothing left to change.
        `by` is "dn" (member DN lists, DN references) or the name attribute posixGroups list members by.
        """
        if self.ad:
            return
        holders: list[tuple[str, LdapResourceConfig, str]] = []
        for other_kind, o in self.config.resources.items():
            m = o.members
            if m is not None and m.member_kind == kind and ((m.values == "dn") if by == "dn" else m.name_attribute == by):
                holders.append((other_kind, o, m.attribute))
            if by == "dn":
                holders += [(other_kind, o, a) for a, target in o.references.items() if target == kind]
        for other_kind, o, attribute in holders:

            async def rename(holder_dn: str, attribute: str = attribute, other_kind: str = other_kind) -> None:
                what = f"renaming a value of {attribute} in {other_kind} {holder_dn}"
                for operation, value, tolerated in ((ldap3.MODIFY_ADD, new, _PRESENT), (ldap3.MODIFY_DELETE, old, _ABSENT)):
                    try:
                        await self.ldap.write(what, _modify(holder_dn, {attribute: [(operation, [value])]}))
                    except LdapFailure as failure:
                        if failure.code not in tolerated:
                            raise app_error(what, failure) from None

            search = self._kind_filter(o, f"({attribute}={filter_value(old)})")
            await self._each_holder(o.base, search, "finding the entries that name a renamed one", rename)

    async def _each_holder(self, base: str, search: str, what: str, change: Any) -> None:
        """`change(dn)` on each entry the search finds. One renamed or deleted by another writer between the search
        and its change (noSuchObject) is looked for again: found under its new DN, or gone with nothing to change."""
        for attempt in range(1, 4):
            moved = False
            for holder in await self.ldap.search(base, search, ["1.1"], what=what):
                try:
                    await change(holder.dn)
                except AppNotFound:
                    if attempt == 3:
                        raise
                    moved = True
            if not moved:
                return

    async def _move(self, kind: str, native_id: NativeId, r: LdapResourceConfig, changes: Record) -> str:
        """A change of the naming attribute renames the entry (modrdn), a change of the placement field moves it."""
        dn = await self._dn(kind, native_id)
        naming_key = next((k for k in changes if k.lower() == r.rdn.lower()), None)
        new_rdn = None
        if naming_key is not None:
            value = changes.pop(naming_key)
            value = value[0] if isinstance(value, list) and value else value
            if value in (None, ""):
                raise AppInvalid(f"{r.rdn} cannot be cleared: it names the entry")
            if rdn_of(dn)[1] != str(value):
                new_rdn = rdn(r.rdn, str(value))
        new_parent = None
        if r.placement is not None and any(k.lower() == r.placement.field.lower() for k in changes):
            wanted = self._parent(r, changes)
            if wanted.lower() != parent_of(dn).lower():
                new_parent = wanted
        if new_rdn is None and new_parent is None:
            return dn
        relative = new_rdn or dn.split(",", 1)[0]
        target = f"{relative},{new_parent or parent_of(dn)}"
        try:
            await self.ldap.write(
                f"renaming {kind} {dn}", lambda conn: conn.modify_dn(dn, relative, delete_old_dn=True, new_superior=new_parent)
            )
        except LdapFailure as failure:
            raise app_error(f"renaming {kind} {dn} to {target}", failure) from None
        self.dns.put(kind, native_id, target)
        return target

    async def _flags(self, kind: str, native_id: NativeId) -> int:
        entry = await self._find_entry(kind, native_id, [UAC])
        if entry is None:
            raise AppNotFound(f"{kind} {native_id}")
        values = entry.get(UAC)
        return int(values[0]) if values else 0x200

    async def delete(self, kind: str, native_id: NativeId) -> None:
        names = await self._listed_names(kind, native_id)
        try:
            dn = await self._on_entry(
                kind,
                native_id,
                f"deleting {kind}",
                lambda entry_dn: self.ldap.write(f"deleting {kind} {entry_dn}", lambda conn: conn.delete(entry_dn)),
            )
        except AppNotFound:
            return  # already gone
        self.dns.drop(kind, native_id)
        await self._forget_member(kind, dn, names)

    async def finish_write(self, kind: str, native_id: NativeId, before: Record) -> None:
        """A write recovery settles as done: the values that still name the entry as it was before it (by DN in
        member lists and DN references, by name in posixGroups' memberUid) are renamed to what names it now, or
        removed from the groups when it is gone. A process killed between the modrdn or delete and that rewrite
        left them; where the rewrite ran (or AD, or the refint overlay, did it) the searches find nothing to change.
        A value that names another entry now (one renamed to the old name meanwhile) is that entry's: left alone."""
        r = self.config.resources.get(kind)
        if self.ad or r is None:
            return
        names = self._name_attributes(kind)
        entry = await self._find_entry(kind, native_id, [self.id_attribute, *sorted(names)])
        naming = _first(next((v for k, v in before.items() if k.lower() == r.rdn.lower()), None))
        old_dn = f"{rdn(r.rdn, naming)},{self._parent(r, before)}" if naming else None
        if old_dn is not None and (entry is not None and dn_key(entry.dn) == dn_key(old_dn) or await self._exists(old_dn)):
            old_dn = None  # not renamed, or the DN is another entry's now
        stale: dict[str, str] = {}
        for attribute in names:
            old = _first(next((v for k, v in before.items() if k.lower() == attribute.lower()), None))
            now = entry.get(attribute)[0].decode("utf-8") if entry is not None and entry.get(attribute) else None
            if old and old != now and not await self._natives_by(kind, attribute, [old]):
                stale[attribute] = old
        if entry is None:
            self.dns.drop(kind, native_id)
            await self._forget_member(kind, old_dn, stale)
            return
        self.dns.put(kind, native_id, entry.dn)
        if old_dn is not None:
            await self._follow(kind, "dn", old_dn, entry.dn)
        for attribute, old in stale.items():
            if entry.get(attribute):
                await self._follow(kind, attribute, old, entry.get(attribute)[0].decode("utf-8"))

    async def _exists(self, dn: str) -> bool:
        found = await self.ldap.search(dn, "(objectClass=*)", ["1.1"], scope=ldap3.BASE, what=f"reading {dn}")
        return bool(found)

    async def _forget_member(self, kind: str, dn: str | None, names: dict[str, str]) -> None:
        """A deleted entry leaves the groups that list it, by DN or by name (AD does this itself; OpenLDAP without
        the refint overlay does not, and never for posixGroup's memberUid)."""
        if self.ad:
            return
        for group_kind, g in self.config.resources.items():
            members = g.members
            if members is None or members.member_kind != kind:
                continue
            value = dn if members.values == "dn" else names.get(members.name_attribute)
            if value is None:
                continue

            async def leave(group_dn: str, group_kind: str = group_kind, g: LdapResourceConfig = g, value: str = value) -> None:
                await self._change_members(group_kind, g, group_dn, [], [value])

            search = self._kind_filter(g, f"({members.attribute}={filter_value(value)})")
            await self._each_holder(g.base, search, "finding the groups of a deleted entry", leave)

    # ------------------------------------------------------------------ search and lists

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        r = self.resource(kind)
        text = filter_value(str(value))
        pattern = {"eq": text, "sw": f"{text}*", "ew": f"*{text}", "co": f"*{text}*", "pr": "*"}[op]
        entries = await self.ldap.search(
            r.base, self._kind_filter(r, f"({field}={pattern})"), self._attributes(r), what=f"searching {kind}"
        )
        return [await self._record(kind, entry) for entry in entries]

    async def list_all(self, kind: str) -> AsyncIterator[tuple[NativeId, Record]]:
        r = self.resource(kind)
        async for page in self.ldap.paged(r.base, self._kind_filter(r), self._attributes(r), self.config.page_size):
            for entry in page:
                yield await self._record(kind, entry)

    # ------------------------------------------------------------------ membership

    async def _member_values(self, r: LdapResourceConfig, members: Sequence[tuple[str, NativeId]]) -> list[str]:
        """The values the group's member attribute holds for these members: their DNs, or their names."""
        assert r.members is not None
        if r.members.values == "dn":
            return [await self._dn(kind, native) for kind, native in members]
        out = []
        for kind, native in members:
            entry = await self._find_entry(kind, native, [r.members.name_attribute])
            if entry is None or not entry.get(r.members.name_attribute):
                raise AppNotFound(f"{kind} {native}")
            out.append(entry.get(r.members.name_attribute)[0].decode("utf-8"))
        return out

    async def _natives_of_dns(self, kind: str, dns: list[str]) -> list[NativeId]:
        """The native ids of the entries these DNs name, in their order (a DN naming no entry of `kind` left out)."""
        return await self._natives_by(kind, self.dn_attribute, dns)

    async def _natives_by(self, kind: str, attribute: str, values: list[str]) -> list[NativeId]:
        """The native ids of the entries whose `attribute` (their DN, or a name) is one of `values`, in that order."""
        by_dn = attribute == self.dn_attribute
        key = dn_key if by_dn else str.lower
        found: dict[str, NativeId] = {}
        unknown = []
        for value in values:
            cached = self.dns.native(kind, value) if by_dn else None
            if cached is not None:
                found[key(value)] = cached
            else:
                unknown.append(value)
        r = self.resource(kind)
        for i in range(0, len(unknown), _CHUNK):
            terms = "".join(f"({attribute}={filter_value(v)})" for v in unknown[i : i + _CHUNK])
            entries = await self.ldap.search(
                r.base, self._kind_filter(r, f"(|{terms})"), [self.id_attribute, attribute], what=f"finding {kind} entries"
            )
            for entry in entries:
                native_id = id_to_text(entry.get(self.id_attribute)[0], self.config.directory)
                found[key(entry.dn if by_dn else entry.get(attribute)[0].decode("utf-8"))] = native_id
                self.dns.put(kind, native_id, entry.dn)
        return [found[key(v)] for v in values if key(v) in found]

    async def _group_values(self, kind: str, g: LdapResourceConfig, native_id: NativeId) -> tuple[str, list[str]]:
        """The group's DN and its member attribute's values, all of them (AD answers a large one in ranges)."""
        assert g.members is not None
        attribute = g.members.attribute
        entry = await self._find_entry(kind, native_id, [attribute])
        if entry is None:
            raise AppNotFound(f"{kind} {native_id}")
        values: list[str] = []
        current = entry
        while True:
            ranged = next(
                ((k, v) for k, v in current.attributes.items() if k.lower().startswith(f"{attribute.lower()};range=")), None
            )
            if ranged is None:
                values += [v.decode("utf-8") for v in current.get(attribute)]
                break
            key, chunk = ranged
            values += [v.decode("utf-8") for v in chunk]
            end = key.rsplit("-", 1)[1]
            if end == "*":
                break
            more = await self.ldap.search(
                entry.dn,
                "(objectClass=*)",
                [f"{attribute};range={int(end) + 1}-*"],
                scope=ldap3.BASE,
                what="reading a large group's members",
            )
            if not more:
                break
            current = more[0]
        placeholder = (g.members.placeholder or "").lower()
        return entry.dn, [v for v in values if v.lower() != placeholder]

    async def list_members(self, kind: str, group_id: NativeId) -> list[tuple[str, NativeId]]:
        g = self.resource(kind)
        if g.members is None:
            return []
        _dn, values = await self._group_values(kind, g, group_id)
        attribute = self.dn_attribute if g.members.values == "dn" else g.members.name_attribute
        natives = await self._natives_by(g.members.member_kind, attribute, values)
        return [(g.members.member_kind, n) for n in natives]

    async def add_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        g = self.resource(kind)
        if g.members is None or not members:
            return
        values = list(dict.fromkeys(await self._member_values(g, members)))
        dn = await self._dn(kind, group_id)
        await self._change_members(kind, g, dn, values, [])

    async def remove_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        g = self.resource(kind)
        if g.members is None or not members:
            return
        values: list[str] = []
        for member in members:
            try:
                values += await self._member_values(g, [member])
            except AppNotFound:
                continue  # gone from the directory: it is in no group
        dn = await self._dn(kind, group_id)
        await self._change_members(kind, g, dn, [], list(dict.fromkeys(values)))

    async def _change_members(self, kind: str, g: LdapResourceConfig, dn: str, add: list[str], remove: list[str]) -> None:
        """Add and delete single values of the member attribute, never rewriting the list (a group of any size).

        Adding a member already there and removing one not there are not errors; a group that must keep a member
        keeps the placeholder when its last one leaves, and loses it when a first one joins.
        """
        assert g.members is not None
        attribute, placeholder = g.members.attribute, g.members.placeholder
        what = f"changing the members of {kind} {dn}"

        async def modify(operation: str, values: list[str], tolerated: frozenset[int]) -> None:
            try:
                await self.ldap.write(what, lambda conn: conn.modify(dn, {attribute: [(operation, values)]}))
            except LdapFailure as failure:
                if failure.code == OBJECT_CLASS and operation == ldap3.MODIFY_DELETE and placeholder:
                    # The last member is leaving a group that must have one: the placeholder stays in its place.
                    await self.ldap.write(what, lambda conn: conn.modify(dn, {attribute: [(ldap3.MODIFY_ADD, [placeholder])]}))
                    await modify(operation, values, tolerated)
                    return
                if failure.code not in tolerated:
                    raise app_error(what, failure) from None
                if len(values) > 1:  # one of them was (or was not) there: the rest one by one
                    for value in values:
                        await modify(operation, [value], tolerated)

        if add:
            await modify(ldap3.MODIFY_ADD, add, _PRESENT)
            if placeholder and placeholder not in add:
                await modify(ldap3.MODIFY_DELETE, [placeholder], _ABSENT)
        if remove:
            await modify(ldap3.MODIFY_DELETE, remove, _ABSENT)

    # ------------------------------------------------------------------ Active Directory's account switch

    async def action(self, kind: str, native_id: NativeId, name: str) -> None:
        if name not in ("disable", "enable") or not self.ad:
            raise AppInvalid(f"no action {name!r} (valid: {', '.join(sorted(self.caps.actions)) or 'none'})")
        flags = with_enabled(await self._flags(kind, native_id), name == "enable")
        await self._on_entry(
            kind,
            native_id,
            f"{name} {kind}",
            lambda dn: self.ldap.write(
                f"{name} {kind} {dn}", lambda conn: conn.modify(dn, {UAC: [(ldap3.MODIFY_REPLACE, [str(flags)])]})
            ),
        )

    # ------------------------------------------------------------------ check --connect, translate

    async def check_schema(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Object classes and attribute types the options name that the server's subschema lacks; bases that are not there."""
        schema = await self.ldap.schema()
        classes = {name.lower(): name for name in schema.object_classes} if schema else {}
        types = {name.lower(): name for name in schema.attribute_types} if schema else {}
        problems: list[tuple[tuple[str | int, ...], str]] = []

        def missing(where: tuple[str | int, ...], name: str, known: dict[str, str], what: str) -> None:
            if name.lower() not in known:
                near = difflib.get_close_matches(name.lower(), list(known), n=1)
                problems.append(
                    (where, f"the directory has no {what} {name!r}" + (f" (did you mean {known[near[0]]}?)" if near else ""))
                )

        for kind, r in self.config.resources.items():
            where: tuple[str | int, ...] = ("resources", kind)
            for i, oc in enumerate(r.object_classes):
                missing((*where, "object_classes", i), oc, classes, "object class")
            missing((*where, "rdn"), r.rdn, types, "attribute type")
            for key in ("multi_valued", "binary"):
                for i, name in enumerate(getattr(r, key)):
                    missing((*where, key, i), name, types, "attribute type")
            for name in r.references:
                missing((*where, "references", name), name, types, "attribute type")
            if r.members is not None:
                missing((*where, "members", "attribute"), r.members.attribute, types, "attribute type")
            for key, dn in (("base", r.base), ("parent", r.parent)):
                if dn and not await self.ldap.search(dn, "(objectClass=*)", ["1.1"], scope=ldap3.BASE, what="reading a base"):
                    problems.append(((*where, key), f"the directory has no entry {dn}"))
        self._schema = schema
        return problems

    def fields(self, kind: str) -> set[str] | None:
        """The attributes entries of `kind` may have (their object classes' MUST and MAY, with the superclasses')."""
        schema = self._schema
        r = self.config.resources.get(kind)
        if schema is None or r is None:
            return None
        known = {name.lower() for name in schema.object_classes}
        if any(oc.lower() not in known for oc in r.object_classes):
            return None  # reported as an unknown object class; its fields cannot be judged
        names: set[str] = set()
        pending = list(r.object_classes)
        seen: set[str] = set()
        while pending:
            name = pending.pop()
            oc = next((v for k, v in schema.object_classes.items() if k.lower() == name.lower()), None)
            if oc is None or name.lower() in seen:
                continue
            seen.add(name.lower())
            names.update(oc.must_contain or [])
            names.update(oc.may_contain or [])
            pending.extend(oc.superior or [])
        if self.ad:
            if self.config.active_directory.enabled_field:
                names.add(self.config.active_directory.enabled_field)
            if self.config.active_directory.password_field:
                names.add(self.config.active_directory.password_field)
        return names

    def plan(
        self,
        op: str,
        kind: str,
        native_id: NativeId | None = None,
        record: Record | None = None,
        members: list[tuple[str, NativeId]] | None = None,
    ) -> list[dict[str, Any]]:
        """The LDAP operations, as `translate` shows them: add / modify / modrdn / delete with their attributes; a password masked."""
        r = self.resource(kind)
        shown = {
            k: (MASK if self.ad and k == self.config.active_directory.password_field and v is not None else v)
            for k, v in (record or {}).items()
        }
        dn = f"<dn of {kind} {native_id}>" if native_id else None
        if op == "create":
            naming = shown.get(r.rdn, "<value>")
            dn = f"{rdn(r.rdn, str(naming))},{self._parent(r, record or {})}"
            return [
                {
                    "operation": "add",
                    "dn": dn,
                    "objectClass": r.object_classes,
                    "attributes": {k: v for k, v in shown.items() if v is not None},
                }
            ]
        if op == "update":
            calls: list[dict[str, Any]] = []
            if r.rdn in shown:
                calls.append(
                    {"operation": "modrdn (when the value changed)", "dn": dn, "new_rdn": rdn(r.rdn, str(shown.pop(r.rdn)))}
                )
            calls.append({"operation": "modify", "dn": dn, "replace": shown})
            return calls
        if op == "delete":
            return [{"operation": "delete", "dn": dn}]
        if op in ("add_members", "remove_members") and r.members is not None:
            verb = "add" if op == "add_members" else "delete"
            values = [f"<{'dn' if r.members.values == 'dn' else r.members.name_attribute} of {k} {n}>" for k, n in members or []]
            return [{"operation": "modify", "dn": dn, verb: {r.members.attribute: values}}]
        if op in ("disable", "enable"):
            return [
                {
                    "operation": "modify",
                    "dn": dn,
                    "replace": {UAC: f"<its flags with ACCOUNTDISABLE {'set' if op == 'disable' else 'cleared'}>"},
                }
            ]
        return super().plan(op, kind, native_id, record, members)


def _first(value: Any) -> str | None:
    """A record field's value as one text (a list's first), None when it has none."""
    value = value[0] if isinstance(value, list) and value else value
    return None if value in (None, "", []) else str(value)


def _modify(dn: str, change: dict[str, Any]) -> Any:
    """A client call modifying one entry (bound now, not by a loop's later values)."""
    return lambda conn: conn.modify(dn, change)


class _DnCache:
    """Native id <-> DN of the entries seen: most writes name an entry by id, and groups name members by DN."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._dn: dict[tuple[str, str], str] = {}
        self._native: dict[tuple[str, str], str] = {}

    def put(self, kind: str, native_id: str, dn: str) -> None:
        if len(self._dn) >= self.LIMIT:
            self._dn.clear()
            self._native.clear()
        old = self._dn.get((kind, native_id))
        if old is not None:
            self._native.pop((kind, dn_key(old)), None)
        self._dn[(kind, native_id)] = dn
        self._native[(kind, dn_key(dn))] = native_id

    def dn(self, kind: str, native_id: str) -> str | None:
        return self._dn.get((kind, native_id))

    def native(self, kind: str, dn: str) -> str | None:
        return self._native.get((kind, dn_key(dn)))

    def drop(self, kind: str, native_id: str) -> None:
        dn = self._dn.pop((kind, native_id), None)
        if dn is not None:
            self._native.pop((kind, dn_key(dn)), None)


__all__ = ["LdapConnector", "LdapSetupError"]
