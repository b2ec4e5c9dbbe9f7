"""The LDAP connector finishing a write cut short (issue 16), against a real slapd without the refint overlay: a
process killed between an entry's modrdn or delete and the connector's rewrite of the values naming it (member DNs,
DN references, posixGroup memberUids) left them naming no entry. Crash recovery calls `finish_write` when it settles
such a write; here it is called as recovery does, after the directory was changed by hand as the dead process left it."""

from __future__ import annotations

from typing import Any

from tests.connectors.test_ldap_connector import opened  # noqa: F401 (the fixture)

POSIX = {
    "User": {"base": "ou=people,TOP", "object_classes": ["inetOrgPerson"], "rdn": "uid"},
    "Group": {
        "base": "ou=groups,TOP",
        "object_classes": ["posixGroup"],
        "rdn": "cn",
        "members": {"attribute": "memberUid", "values": "name", "name_attribute": "uid"},
    },
}


def members(slapd: Any, top: str, cn: str, attribute: str = "member") -> list[str]:
    [entry] = slapd.search(f"ou=groups,{top}", f"(cn={cn})", attribute)
    return sorted(v.lower() for v in entry.get(attribute, []))


async def test_a_rename_cut_short_is_finished_in_member_dns_and_references(opened: Any, slapd: Any) -> None:  # noqa: F811
    connector = await opened()
    top = connector.top
    ann = await connector.create("User", {"uid": "ann", "cn": "Ann", "sn": "A"})
    bob = await connector.create("User", {"uid": "bob", "cn": "Bob", "sn": "B", "manager": ann})
    await connector.create_with_members("Group", {"cn": "team"}, [("User", ann), ("User", bob)])
    slapd.modify(f"dn: uid=ann,ou=people,{top}\nchangetype: modrdn\nnewrdn: uid=ann2\ndeleteoldrdn: 1\n")  # then the kill
    assert f"uid=ann,ou=people,{top}" in members(slapd, top, "team"), "no refint: the old DN stays"

    for _ in range(2):  # finished, then nothing left to do
        await connector.finish_write("User", ann, {"uid": "ann", "cn": "Ann", "sn": "A"})
        assert members(slapd, top, "team") == sorted([f"uid=ann2,ou=people,{top}", f"uid=bob,ou=people,{top}"])
        [entry] = slapd.search(f"ou=people,{top}", "(uid=bob)", "manager")
        assert [m.lower() for m in entry["manager"]] == [f"uid=ann2,ou=people,{top}"]
    [(group, _record)] = await connector.find("Group", "cn", "team")
    assert sorted(n for _k, n in await connector.list_members("Group", group)) == sorted([ann, bob])


async def test_a_delete_cut_short_is_finished_and_a_dangling_member_is_no_failure(opened: Any, slapd: Any) -> None:  # noqa: F811
    connector = await opened()
    top = connector.top
    ann = await connector.create("User", {"uid": "ann", "cn": "Ann", "sn": "A"})
    group = await connector.create_with_members("Group", {"cn": "team"}, [("User", ann)])
    ghost = f"uid=ghost,ou=people,{top}"  # a member DN naming no entry
    slapd.modify(f"dn: cn=team,ou=groups,{top}\nchangetype: modify\nadd: member\nmember: {ghost}\n")
    assert await connector.list_members("Group", group) == [("User", ann)], "the DN naming no entry is left out"
    assert await connector.get("Group", group) is not None
    slapd.modify(f"dn: uid=ann,ou=people,{top}\nchangetype: delete\n")  # then the kill
    assert members(slapd, top, "team") == sorted([f"uid=ann,ou=people,{top}", ghost])

    await connector.finish_write("User", ann, {"uid": "ann", "cn": "Ann", "sn": "A"})
    assert members(slapd, top, "team") == [ghost], "ann's DN is gone; the DN naming no entry ann ever had stays"
    assert await connector.list_members("Group", group) == []
    await connector.finish_write("User", ann, {"uid": "ann"})  # again: nothing to do, no error


async def test_an_old_dn_another_entry_holds_now_is_left_to_it(opened: Any, slapd: Any) -> None:  # noqa: F811
    """ann renamed to ann2 (the kill before the rewrite), then a new ann created: the group's uid=ann names the new
    entry now, and finishing ann's rename cannot tell whose it was meant to be: it is left as it is, naming an entry."""
    connector = await opened()
    top = connector.top
    ann = await connector.create("User", {"uid": "ann", "cn": "Ann", "sn": "A"})
    await connector.create_with_members("Group", {"cn": "team"}, [("User", ann)])
    slapd.modify(f"dn: uid=ann,ou=people,{top}\nchangetype: modrdn\nnewrdn: uid=ann2\ndeleteoldrdn: 1\n")
    await connector.create("User", {"uid": "ann", "cn": "New Ann", "sn": "N"})
    await connector.finish_write("User", ann, {"uid": "ann"})
    assert members(slapd, top, "team") == [f"uid=ann,ou=people,{top}"]


async def test_a_rename_and_a_delete_cut_short_are_finished_in_posix_groups(opened: Any, slapd: Any) -> None:  # noqa: F811
    connector = await opened(resources=POSIX)
    top = connector.top
    ann = await connector.create("User", {"uid": "ann", "cn": "Ann", "sn": "A"})
    ben = await connector.create("User", {"uid": "ben", "cn": "Ben", "sn": "B"})
    await connector.create_with_members("Group", {"cn": "staff", "gidNumber": "5000"}, [("User", ann), ("User", ben)])
    slapd.modify(f"dn: uid=ann,ou=people,{top}\nchangetype: modrdn\nnewrdn: uid=ann.smith\ndeleteoldrdn: 1\n")
    await connector.finish_write("User", ann, {"uid": "ann"})
    assert members(slapd, top, "staff", "memberUid") == ["ann.smith", "ben"]
    slapd.modify(f"dn: uid=ben,ou=people,{top}\nchangetype: delete\n")
    await connector.finish_write("User", ben, {"uid": "ben"})
    assert members(slapd, top, "staff", "memberUid") == ["ann.smith"]
    await connector.finish_write("User", ann, {"uid": "ann.smith"})  # not renamed: nothing to do
    assert members(slapd, top, "staff", "memberUid") == ["ann.smith"]


async def test_a_group_renamed_or_deleted_while_a_rename_or_delete_follows_is_followed(opened: Any, slapd: Any) -> None:  # noqa: F811
    """A group renamed or deleted by another writer between the connector's search for the groups naming an entry and
    its modify of one (found by the 50-kill LDAP run without refint: a user's rename beside a group's rename, and
    beside a group's delete: answered 404 and aborted though the modrdn had taken effect, or the renamed group left
    listing the old DN). The group is looked for again: found under its new DN, or gone with nothing to change."""
    connector = await opened()
    top = connector.top
    ann = await connector.create("User", {"uid": "ann", "cn": "Ann", "sn": "A"})
    bob = await connector.create("User", {"uid": "bob", "cn": "Bob", "sn": "B"})
    await connector.create_with_members("Group", {"cn": "team"}, [("User", ann), ("User", bob)])
    search = connector.ldap.search

    def meanwhile(ldif: str) -> Any:
        async def then(*args: Any, **kwargs: Any) -> Any:
            found = await search(*args, **kwargs)
            if args[0] == f"ou=groups,{top}" and kwargs.get("what", "").startswith("finding the"):
                slapd.modify(ldif)
                connector.ldap.search = search
            return found

        return then

    connector.ldap.search = meanwhile(f"dn: cn=team,ou=groups,{top}\nchangetype: modrdn\nnewrdn: cn=crew\ndeleteoldrdn: 1\n")
    await connector.update("User", ann, {"uid": "ann2"})
    assert members(slapd, top, "crew") == sorted([f"uid=ann2,ou=people,{top}", f"uid=bob,ou=people,{top}"])

    connector.ldap.search = meanwhile(f"dn: cn=crew,ou=groups,{top}\nchangetype: delete\n")
    await connector.delete("User", bob)
    assert slapd.search(f"ou=people,{top}", "(uid=bob)") == [] and slapd.search(f"ou=groups,{top}", "(cn=crew)") == []
