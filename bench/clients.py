"""SCIM clients for the scenarios that are not a request rate: `python -m bench.clients bulk | groups | page | hr-ids`.

Each runs in its own process (pinned by the harness away from the server), writes the files later scenarios
read (ids, names, filters, member pools) and prints one JSON line of figures. Bulk import is also how the
directory is seeded: through the gateway, as an IdP would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp

USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_URN = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"

GIVEN = [
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Dennis",
    "Edsger",
    "Frances",
    "Grace",
    "Guido",
    "Hedy",
    "Ivan",
    "Jean",
    "Ken",
    "Linus",
    "Margaret",
    "Niklaus",
    "Ole",
    "Radia",
    "Shafi",
    "Tim",
    "Ursula",
    "Whitfield",
    "Xavier",
    "Yukihiro",
]
FAMILY = [
    "Lovelace",
    "Turing",
    "Liskov",
    "Shannon",
    "Ritchie",
    "Dijkstra",
    "Allen",
    "Hopper",
    "Rossum",
    "Lamarr",
    "Sutherland",
    "Sammet",
    "Thompson",
    "Torvalds",
    "Hamilton",
    "Wirth",
    "Dahl",
    "Perlman",
    "Goldwasser",
    "Berners-Lee",
]
DEPARTMENTS = ["Sales", "Engineering", "Finance", "Support", "Legal", "Operations"]
TITLES = ["Engineer", "Analyst", "Manager", "Director", "Consultant", "Associate"]


def user_body(i: int, rng: random.Random) -> dict[str, Any]:
    given, family = rng.choice(GIVEN), rng.choice(FAMILY)
    user_name = f"{given}.{family}.{i:06d}".lower()
    return {
        "schemas": [USER_URN, ENTERPRISE_URN],
        "userName": user_name,
        "name": {"givenName": given, "familyName": family},
        "displayName": f"{given} {family}",
        "emails": [{"type": "work", "value": f"{user_name}@example.org", "primary": True}],
        "phoneNumbers": [{"type": "work", "value": f"+1 555 {i:07d}"}],
        "title": rng.choice(TITLES),
        "active": True,
        ENTERPRISE_URN: {"department": rng.choice(DEPARTMENTS), "employeeNumber": f"E{i:07d}"},
    }


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))] if ordered else 0.0


def _session(token: str, connections: int) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
    return aiohttp.ClientSession(
        headers=headers, connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=600)
    )


async def bulk(args: argparse.Namespace) -> dict[str, Any]:
    """Create args.users users in Bulk requests of args.batch operations, args.concurrency requests in flight."""
    rng = random.Random(args.seed + args.start)
    bodies = [user_body(args.start + i, rng) for i in range(args.users)]
    ids: list[str | None] = [None] * args.users
    batches = [range(s, min(s + args.batch, args.users)) for s in range(0, args.users, args.batch)]
    pending = list(reversed(batches))
    failures: list[str] = []
    latencies: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while pending:
            batch = pending.pop()
            ops = [{"method": "POST", "path": "/Users", "bulkId": f"u{i}", "data": bodies[i]} for i in batch]
            started = time.perf_counter()
            async with session.post(args.url + "/Bulk", data=json.dumps({"schemas": [BULK_URN], "Operations": ops})) as resp:
                text = await resp.text()
            latencies.append(time.perf_counter() - started)
            if resp.status != 200:
                failures.append(f"Bulk answered {resp.status}: {text[:300]}")
                continue
            for op in json.loads(text)["Operations"]:
                i = int(op["bulkId"][1:])
                if str(op["status"]).startswith("2") and op.get("location"):
                    ids[i] = op["location"].rsplit("/", 1)[1]
                elif len(failures) < 20:
                    failures.append(f"{bodies[i]['userName']}: {json.dumps(op)[:300]}")

    async with _session(args.token, args.concurrency) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        wall = time.perf_counter() - started
    out = Path(args.out)
    created = [(i, rid) for i, rid in enumerate(ids) if rid is not None]
    mode = "a" if args.start else "w"  # a later part of the directory adds to the files the first part wrote
    files = {
        "ids.txt": (f"{rid}\n" for _, rid in created),
        "names.txt": (f"{bodies[i]['userName']}\n" for i, _ in created),
        "people.txt": (f"{rid}\t{bodies[i]['userName']}\n" for i, rid in created),  # for PUT: a user and its own userName
        "filters.txt": (urllib.parse.quote(f'userName eq "{bodies[i]["userName"]}"', safe="") + "\n" for i, _ in created),
    }
    for name, lines in files.items():
        with open(out / name, mode) as f:
            f.writelines(lines)
    return {
        "users": args.users,
        "created": len(created),
        "wall_s": wall,
        "users_per_s": len(created) / wall if wall else 0,
        "requests": len(batches),
        "batch": args.batch,
        "concurrency": args.concurrency,
        "request_p50_s": _percentile(latencies, 50),
        "request_max_s": max(latencies, default=0.0),
        "failures": failures[:20],
    }


async def groups(args: argparse.Namespace) -> dict[str, Any]:
    """One group of args.big members and args.small_groups groups of args.small_size; member pools for the add scenarios.

    Pools, each a file of `group id<TAB>user id` lines naming users in no group yet: members-big.txt and
    members-big-full.txt (the big group), members-small.txt (the small groups in turn, so each grows slowly).
    """
    ids = Path(args.ids).read_text().split()
    small_total = args.small_groups * args.small_size
    if len(ids) < args.big + small_total + 3:
        raise SystemExit(f"{len(ids)} users are too few for a group of {args.big} and {args.small_groups} of {args.small_size}")
    big_members, rest = ids[: args.big], ids[args.big :]
    small_members, pool = rest[:small_total], rest[small_total:]
    third = len(pool) // 3
    pool_big, pool_small, pool_full = pool[:third], pool[third : 2 * third], pool[2 * third :]
    add_latencies: list[float] = []
    async with _session(args.token, 4) as session:

        async def create(name: str, members: list[str]) -> str:
            body = {"schemas": [GROUP_URN], "displayName": name, "members": [{"value": m} for m in members]}
            async with session.post(args.url + "/Groups?excludedAttributes=members", data=json.dumps(body)) as resp:
                text = await resp.text()
                if resp.status != 201:
                    raise SystemExit(f"creating group {name}: {resp.status} {text[:500]}")
                return str(json.loads(text)["id"])

        started = time.perf_counter()
        big = await create("bench-big", [])
        for s in range(0, len(big_members), args.batch):
            chunk = big_members[s : s + args.batch]
            body = {
                "schemas": [PATCH_URN],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": m} for m in chunk]}],
            }
            t0 = time.perf_counter()
            async with session.patch(f"{args.url}/Groups/{big}?excludedAttributes=members", data=json.dumps(body)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise SystemExit(f"adding members to the big group: {resp.status} {text[:500]}")
            add_latencies.append(time.perf_counter() - t0)
        big_s = time.perf_counter() - started
        started = time.perf_counter()
        small = [
            await create(f"bench-small-{k:03d}", small_members[k * args.small_size : (k + 1) * args.small_size])
            for k in range(args.small_groups)
        ]
        small_s = time.perf_counter() - started
    out = Path(args.out)
    (out / "members-big.txt").write_text("".join(f"{big}\t{u}\n" for u in pool_big))
    (out / "members-big-full.txt").write_text("".join(f"{big}\t{u}\n" for u in pool_full))
    (out / "members-small.txt").write_text("".join(f"{small[k % len(small)]}\t{u}\n" for k, u in enumerate(pool_small)))
    return {
        "big_group": big,
        "big_size": len(big_members),
        "seed_big_s": big_s,
        "seed_big_batch_p50_s": _percentile(add_latencies, 50),
        "seed_big_batch_last_s": add_latencies[-1] if add_latencies else 0.0,
        "small_groups": len(small),
        "small_size": args.small_size,
        "seed_small_s": small_s,
        "pool_big": len(pool_big),
        "pool_small": len(pool_small),
        "pool_full": len(pool_full),
    }


async def page(args: argparse.Namespace) -> dict[str, Any]:
    """Page through every user, one page after another (as an IdP's full sync does), count per page."""
    latencies: list[float] = []
    seen = 0
    total = None
    start = 1
    async with _session(args.token, 1) as session:
        started = time.perf_counter()
        while total is None or start <= total:
            t0 = time.perf_counter()
            async with session.get(f"{args.url}/Users", params={"startIndex": str(start), "count": str(args.count)}) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise SystemExit(f"page at {start}: {resp.status} {text[:500]}")
            latencies.append(time.perf_counter() - t0)
            body = json.loads(text)
            total = int(body["totalResults"])
            got = len(body.get("Resources", []))
            if got == 0:
                break
            seen += got
            start += got
        wall = time.perf_counter() - started
    tenth = max(1, len(latencies) // 10)
    return {
        "count": args.count,
        "pages": len(latencies),
        "resources": seen,
        "total": total,
        "wall_s": wall,
        "pages_per_s": len(latencies) / wall if wall else 0,
        "resources_per_s": seen / wall if wall else 0,
        "page_p50_ms": _percentile(latencies, 50) * 1000,
        "page_p99_ms": _percentile(latencies, 99) * 1000,
        "first_tenth_mean_ms": sum(latencies[:tenth]) / tenth * 1000,
        "last_tenth_mean_ms": sum(latencies[-tenth:]) / tenth * 1000,
    }


async def hr_ids(args: argparse.Namespace) -> dict[str, Any]:
    """The fake hr app's own user ids (GET /api/users, page by page), for the direct-GET comparison."""
    found: list[str] = []
    async with aiohttp.ClientSession(headers={"X-API-Key": args.key}) as session:
        page_no = 1
        while True:
            async with session.get(f"{args.api}/users", params={"page": str(page_no), "per_page": "100"}) as resp:
                body = await resp.json()
            found += [str(u["id"]) for u in body["data"]]
            if page_no * 100 >= body["total"]:
                break
            page_no += 1
    Path(args.out).write_text("".join(f"{i}\n" for i in found))
    return {"users": len(found)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bulk")
    b.add_argument("--url", required=True, help="the SCIM base URL")
    b.add_argument("--token", required=True)
    b.add_argument("--users", type=int, required=True)
    b.add_argument("--batch", type=int, default=1000)
    b.add_argument("--concurrency", type=int, default=4)
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--start", type=int, default=0, help="index of the first user (a later part of the directory)")
    b.add_argument(
        "--out", required=True, help="folder for ids.txt, names.txt, people.txt, filters.txt (appended to with --start)"
    )
    g = sub.add_parser("groups")
    g.add_argument("--url", required=True)
    g.add_argument("--token", required=True)
    g.add_argument("--ids", required=True)
    g.add_argument("--big", type=int, required=True)
    g.add_argument("--small-groups", type=int, default=100)
    g.add_argument("--small-size", type=int, default=10)
    g.add_argument("--batch", type=int, default=1000)
    g.add_argument("--out", required=True)
    p = sub.add_parser("page")
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--count", type=int, default=100)
    h = sub.add_parser("hr-ids")
    h.add_argument("--api", required=True)
    h.add_argument("--key", required=True)
    h.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run = {"bulk": bulk, "groups": groups, "page": page, "hr-ids": hr_ids}[args.command]
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
