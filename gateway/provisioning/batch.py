"""Creates in a batch (a Bulk import): the same journal entries and recovery as single creates, at a fraction of the cost.

Users are claimed in one store transaction, created in the app in one call (one transaction for SQL), read
back at once and settled in one transaction, instead of a commit and a round trip each. Groups, and users
created inactive, go one by one through the ordinary create. Each answer is what `create` would have
answered alone: the created resource, or the error that refused that one.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..connectors.base import WRITE_KEYS
from ..connectors.errors import AppError
from ..mapping.compile import CompiledResource
from ..store import NativeConflict
from .breaker import CircuitOpen
from .context import Context, copy_of, write_only_values
from .errors import AppFailed, BadAnswer, ProvisioningError, Taken
from .pipeline import hide
from .reads import Reads
from .resource import Resource
from .writes import Writes

Answer = Resource | ProvisioningError


class BatchCreate:
    def __init__(self, ctx: Context, reads: Reads, writes: Writes) -> None:
        self.ctx = ctx
        self.reads = reads
        self.writes = writes

    async def create_many(self, kind: str, resources: list[dict[str, Any]]) -> list[Answer]:
        """Create `resources` in order; each answer the created resource (its membership not read) or its error."""
        out: list[Answer | None] = [None] * len(resources)
        batch: list[int] = []
        for i, resource in enumerate(resources):
            if kind == "User" and resource.get("active") is not False:
                batch.append(i)
                continue
            await self._create_batch(kind, resources, batch, out)
            batch = []
            try:
                out[i] = await self.writes.create(kind, resource)
            except ProvisioningError as exc:
                out[i] = exc
        await self._create_batch(kind, resources, batch, out)
        answers = [answer for answer in out if answer is not None]
        assert len(answers) == len(resources), "every create is answered"
        return answers

    async def _create_batch(self, kind: str, resources: list[dict[str, Any]], batch: list[int], out: list[Answer | None]) -> None:
        if not batch:
            return
        ctx = self.ctx
        cres = ctx.resource(kind)
        what = f"creating {kind}"
        prepared: list[tuple[int, str, dict[str, Any], dict[str, Any]]] = []  # (index, unique key, record, data)
        for i in batch:
            try:
                prepared.append(
                    (
                        i,
                        ctx.unique_key(cres, resources[i]),
                        await ctx.create_record(cres, resources[i]),
                        copy_of(cres, resources[i]),
                    )
                )
            except ProvisioningError as exc:
                out[i] = exc
        if not prepared:
            return
        try:
            async with ctx.pipeline.admitted(what):  # before the claims: a batch the breaker refuses is never journaled
                await self._claim_and_create(kind, cres, resources, prepared, out)
        except AppFailed as exc:
            if not isinstance(exc.cause, CircuitOpen):
                raise
            for i, _, _, _ in prepared:
                out[i] = exc

    async def _claim_and_create(
        self,
        kind: str,
        cres: CompiledResource,
        resources: list[dict[str, Any]],
        prepared: list[tuple[int, str, dict[str, Any], dict[str, Any]]],
        out: list[Answer | None],
    ) -> None:
        ctx = self.ctx
        what = f"creating {kind}"
        claimed: list[tuple[int, int, dict[str, Any], dict[str, Any]]] = []  # (index, seq, record, data)
        keys: list[str] = []  # each record's idempotency key (its SCIM id), as a single create's (writes.py)
        keyed = kind in ctx.connector.caps.idempotent_create
        creates = [
            (
                str(uuid.uuid4()),
                unique_key,
                data,
                bool(write_only_values(cres, resources[i], record)),
                ctx.unique_name(cres, resources[i]),
            )
            for i, unique_key, record, data in prepared
        ]
        outcomes = await ctx.pipeline.claim_create_many(kind, creates, keyed=keyed)
        for (i, _, record, data), (rid, *_), outcome in zip(prepared, creates, outcomes, strict=True):
            if isinstance(outcome, Taken):
                out[i] = outcome
            else:
                claimed.append((i, outcome, record, data))
                keys.append(rid)
        if not claimed:
            return
        with ctx.pipeline.tracking(seq for _, seq, _, _ in claimed):
            sent_keys = WRITE_KEYS.set(keys)  # the connector sends each under its key: recovery may send it again
            try:
                async with ctx.pipeline.admission():
                    answers = await ctx.connector.create_many(kind, [record for _, _, record, _ in claimed])
            except Exception as exc:  # raised, not answered per record: nothing was created, every claim is given up
                await self._give_up(cres, resources, claimed, exc, out)
                if not isinstance(exc, AppError):
                    raise
                return
            finally:
                WRITE_KEYS.reset(sent_keys)
            created: list[tuple[int, int, str, dict[str, Any]]] = []
            for (i, seq, record, data), answer in zip(claimed, answers, strict=True):
                if isinstance(answer, AppError):
                    hide(answer, write_only_values(cres, resources[i], record))
                    await ctx.pipeline.abort(seq, f"app refused: {answer.detail}")
                    out[i] = AppFailed(what, answer)
                else:
                    created.append((i, seq, str(answer), data))
            settled = await self.reads.read_back_many(cres, [(native_id, data) for _, _, native_id, data in created])
            rows = await ctx.pipeline.settle_create_many(
                [(seq, native_id, data) for (_, seq, native_id, _), data in zip(created, settled, strict=True)]
            )
            for (i, seq, _, _), row in zip(created, rows, strict=True):
                if isinstance(row, NativeConflict):
                    await ctx.pipeline.abort(seq, "app returned a native id that is already linked")
                    out[i] = BadAnswer(f"{what}: the app returned the id of an existing record")
                else:
                    out[i] = Resource(row, row.data)

    async def _give_up(
        self,
        cres: CompiledResource,
        resources: list[dict[str, Any]],
        claimed: list[tuple[int, int, dict[str, Any], dict[str, Any]]],
        exc: Exception,
        out: list[Answer | None],
    ) -> None:
        """The batch call failed as a whole: abort every claim; each create is answered with the app's failure."""
        if isinstance(exc, AppError):
            hide(exc, [v for i, _, record, _ in claimed for v in write_only_values(cres, resources[i], record)])
        reason = exc.detail if isinstance(exc, AppError) else type(exc).__name__
        for _, seq, _, _ in claimed:
            await self.ctx.pipeline.abort(seq, f"not created: {reason}")
        if isinstance(exc, AppError):
            failed = AppFailed(f"creating {cres.name}", exc)
            for i, _, _, _ in claimed:
                out[i] = failed


__all__ = ["BatchCreate"]
