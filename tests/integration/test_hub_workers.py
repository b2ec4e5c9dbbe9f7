"""Two gateway processes serving the hub on one PostgreSQL store share its delivery (tests/integration/hub_stack.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from tests.conftest import LiveGateway
from tests.fakes.serve import HR_API_KEY
from tests.integration.hub_stack import HUB_FILE, HUB_TOKEN, Demo, Stack, eventually, write_mappings


async def test_two_gateway_processes_on_one_postgresql_store_share_delivery_each_entry_once(tmp_path: Path) -> None:
    """Two processes serve the hub on one PostgreSQL store, the IdP writing to both: every user reaches hr once
    (one POST each, no 409 from a second delivery), and each process delivered a share (SKIP LOCKED)."""
    from aiohttp.test_utils import TestServer

    from tests.fakes.hr_app import HR_STATE, create_hr_app
    from tests.services import create_pg_database, drop_pg_database, pg_url

    database = await create_pg_database()
    hr = TestServer(create_hr_app(api_key=HR_API_KEY), host="127.0.0.1")
    await hr.start_server()
    _demo, hr_yaml = write_mappings(tmp_path)
    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(yaml.safe_dump(HUB_FILE | {"apps": {"hr": HUB_FILE["apps"]["hr"]}}))
    env = {
        "HR_API_URL": str(hr.make_url("/api")),
        "HR_API_KEY": HR_API_KEY,
        "HUB_SCIM_TOKEN": HUB_TOKEN,
        "SCIM_GATEWAY_STORE": pg_url(database),
    }
    gateways = [LiveGateway(tmp_path / f"g{i}", token="", env=env) for i in range(2)]
    args = ("--config", str(hr_yaml), "--hub", str(hub_yaml), "--log-level", "debug")
    try:
        await asyncio.gather(*(asyncio.to_thread(g.start, *args) for g in gateways))
        stacks = [Stack(tmp_path, None, g, Demo(tmp_path / "none.db")) for g in gateways]  # type: ignore[arg-type]
        names = [f"pg.u{i}@example.com" for i in range(40)]
        ids = await asyncio.gather(*(stacks[i % 2].create_user(n) for i, n in enumerate(names)))
        await asyncio.gather(
            *(
                stacks[(i + 1) % 2].patch(f"/Users/{uid}", {"op": "replace", "path": "title", "value": "Done"})
                for i, uid in enumerate(ids)
            )
        )
        state = hr.app[HR_STATE]

        async def delivered() -> None:
            assert sorted(u["login"] for u in state.users.values()) == sorted(names)
            assert all(u["title"] == "Done" for u in state.users.values())
            totals = (await stacks[0].status())["totals"]
            assert totals == {"delivered": 40, "pending": 0, "failed": 0}, totals

        await eventually(delivered, "every user in hr, at its latest state", timeout=60)
        posts = [path for method, path in state.calls if method == "POST" and path == "/users"]
        assert len(posts) == len(names), f"{len(posts)} creates for {len(names)} users"
        # Both processes delivered (each logs what it delivered at debug level); together, each entry once per change.
        shares = [g.log.read_text().count("delivered to hr") for g in gateways]
        assert all(shares), shares
    finally:
        for g in gateways:
            g.stop()
        await hr.close()
        await drop_pg_database(database)
