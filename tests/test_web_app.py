"""A real Starlette application, in process through httpx's ASGI transport: one request
starts a run, another reads its result, with a Runtime opened in the app's lifespan and
with a Client beside a runtime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aruntime import Client, Runtime, step, workflow


@step
async def price(item: str, quantity: int) -> int:
    return len(item) * quantity


@workflow(name="web_test.order")
async def order(item: str, quantity: int) -> dict[str, Any]:
    return {"item": item, "total": await price(item, quantity)}


def make_app(kind: str, url: str) -> Starlette:
    """The app: POST /orders/{id} starts a run, GET /orders/{id} waits for its result."""
    holder: dict[str, Runtime | Client] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        opened: Runtime | Client = await (Runtime(url) if kind == "runtime" else Client(url)).open()
        holder["api"] = opened
        try:
            yield
        finally:
            await opened.aclose()

    async def start(request: Request) -> JSONResponse:
        body = await request.json()
        run_id = request.path_params["run_id"]
        await holder["api"].start(order, body["item"], body["quantity"], run_id=run_id)
        return JSONResponse({"run_id": run_id}, status_code=202)

    async def result(request: Request) -> JSONResponse:
        api = holder["api"]
        run_id = request.path_params["run_id"]
        value: Any
        if isinstance(api, Client):
            value = await api.handle(run_id).result(timeout=10)
        else:
            value = await api.handle(run_id).result()
        return JSONResponse(value)

    return Starlette(
        routes=[
            Route("/orders/{run_id}", start, methods=["POST"]),
            Route("/orders/{run_id}", result, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan around an httpx client that calls it in process."""
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://app")
        )


@pytest.mark.parametrize("kind", ["runtime", "client"])
async def test_one_request_starts_a_run_and_another_reads_its_result(
    kind: str, tmp_path: Path
) -> None:
    """POST starts the run (through the lifespan's Runtime, or a Client beside a worker's
    runtime); a later GET returns the workflow's result."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with contextlib.AsyncExitStack() as stack:
        if kind == "client":  # the worker: a runtime that owns the file
            await stack.enter_async_context(Runtime(url, workflows=[order]))
        http = await stack.enter_async_context(serve(make_app(kind, url)))
        started = await http.post("/orders/o-1", json={"item": "book", "quantity": 3})
        assert started.status_code == 202
        done = await http.get("/orders/o-1")
        assert done.status_code == 200
        assert done.json() == {"item": "book", "total": 12}
