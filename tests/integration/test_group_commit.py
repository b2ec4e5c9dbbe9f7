"""Group commit under real concurrency: a burst of creates, a third of them racing for a name another one takes,
answered by a live `scim-gateway serve` (SQL demo app, SQLite store) and killed with SIGKILL in the middle.

Many claims and settles then share each commit (gateway/store/group.py). After each kill a new process starts
on the same data dir (start-up recovery settles what was pending) and the test checks: no entry left pending,
every create answered 201 is in the store and in the app under its name, every 409 is for a name another
resource holds, no name held twice, and the store's linked records are exactly the app's (no orphan either way).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp

from tests.conftest import USER_URN
from tests.integration.crash_loop import (
    TOKEN,
    Closers,
    GatewayProcess,
    cleanup_fixture,  # noqa: F401 (the fixture `cleanup`)
    demo_app_holdings,
    journal,
    posix_processes,
    store_rows,
)

BURST = 48  # creates sent at once
ROUNDS = 4


async def _post(session: aiohttp.ClientSession, url: str, name: str) -> tuple[str, int | None, str | None]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}
    body = {"schemas": [USER_URN], "userName": name, "title": "burst"}
    try:
        async with session.post(url + "/Users", json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            return name, resp.status, data.get("id") if resp.status == 201 else None
    except (TimeoutError, aiohttp.ClientError, OSError):
        return name, None, None  # the gateway died first: the create may have applied or not


@posix_processes
async def test_a_burst_of_creates_some_refused_at_claim_killed_mid_group(tmp_path: Path, cleanup: Closers) -> None:
    rng = random.Random(1717)
    gateway = GatewayProcess(tmp_path, "--token", TOKEN)
    cleanup.append(gateway.close)
    pending_at_kills: list[int] = []
    answered: dict[str, str] = {}  # userName -> id, answered 201
    refused: set[str] = set()  # answered 409
    unanswered: set[str] = set()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as session:
        session._retry_connection = False  # a request is sent once (see test_crash.crash_loop)
        await gateway.start()
        for burst in range(ROUNDS):
            # Every third name is also taken by the create before it: one of the two wins, the other is a 409.
            names = [f"burst{burst}.{i - 1 if i % 3 == 2 else i}@x.test" for i in range(BURST)]
            posts = [asyncio.create_task(_post(session, gateway.base_url, name)) for name in names]
            # Killed once several claims are committed and unsettled at once (a group's worth), whatever the speed.
            # Some answered first, so acknowledged creates are checked too.
            answers, deadline = rng.randint(1, 8), time.monotonic() + 10
            while time.monotonic() < deadline and (
                sum(1 for p in posts if p.done() and p.result()[1] == 201) < answers or len(journal(gateway.store_file)) < 2
            ):
                await asyncio.sleep(0.002)
            gateway.kill()
            pending_at_kills.append(len(journal(gateway.store_file)))
            results = await asyncio.gather(*posts)
            await gateway.start()

            unexpected = [(name, status) for name, status, _ in results if status not in (201, 409, None)]
            assert not unexpected, f"burst {burst}: answers other than 201, 409 or none: {unexpected}"
            answered.update({name: rid for name, status, rid in results if status == 201 and rid is not None})
            refused.update(name for name, status, _ in results if status == 409)
            unanswered.update(name for name, status, _ in results if status is None)
            assert journal(gateway.store_file) == [], "start-up recovery left entries pending"
            store = store_rows(gateway.store_file, "demo")
            app = demo_app_holdings(gateway.data)
            assert store.unsettled == []
            by_name: dict[str, list[str]] = {}
            for rid, (_native, copy) in store.users.items():
                by_name.setdefault(copy["userName"].lower(), []).append(rid)
            assert all(len(ids) == 1 for ids in by_name.values()), "a name held twice"
            for name, rid in answered.items():
                assert by_name.get(name.lower()) == [rid], f"{name} answered 201 as {rid}, store holds {by_name.get(name)}"
            for name in refused:  # its rival holds the name, or got no answer (its claim then rolled back, maybe)
                assert name.lower() in by_name or name in unanswered, f"{name} answered 409, yet no resource holds it"
            linked = {native: copy["userName"].lower() for native, copy in store.users.values()}
            assert None not in linked, "a settled create with no app record"
            in_app = {native: user["login"].lower() for native, user in app.users.items()}
            assert linked == in_app, "the store's links and the app's records differ (an orphan or a lost write)"
    assert refused and answered, f"{len(answered)} creates answered 201, {len(refused)} refused at the claim"
    assert sum(1 for n in pending_at_kills if n >= 2) * 2 >= ROUNDS, f"kills did not land mid-group: {pending_at_kills}"
