"""Concurrent clients for a running service: what the load benchmark and its test use.

Each of N clients (asyncio tasks sharing one connection pool on loopback) sends a request,
waits for its answer, and sends the next, until `next_body` has nothing more for it or the
deadline passes: bounded in count and in time.
"""

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx


@dataclass
class Outcome:
    client: int
    body: bytes  # what was sent
    status: int  # 0: no answer (a connection error, the timeout, not JSON)
    answer: dict  # the JSON answer; with status 0, {"error": what went wrong}
    latency_s: float


async def _client(http, url, client, next_body, deadline, outcomes):
    while time.monotonic() < deadline and (body := next_body(client)) is not None:
        start = time.monotonic()
        try:
            response = await http.post(url, content=body)
            status, answer = response.status_code, response.json()
        except (httpx.HTTPError, ValueError) as e:
            status, answer = 0, {"error": f"no answer ({type(e).__name__}: {e})"}
        outcomes.append(Outcome(client, body, status, answer, time.monotonic() - start))


async def _run(url, clients, next_body, duration_s, timeout_s):
    deadline = time.monotonic() + duration_s
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s, headers=headers) as http:
        await asyncio.gather(
            *(_client(http, url, c, next_body, deadline, outcomes) for c in range(clients))
        )
    return outcomes


def run_clients(
    url: str,
    clients: int,
    next_body: Callable[[int], bytes | None],
    duration_s: float,
    timeout_s: float = 60,
) -> tuple[list[Outcome], float]:
    """POST bodies from `next_body(client)` to `url` -> every outcome and the seconds taken."""
    start = time.monotonic()
    outcomes = asyncio.run(_run(url, clients, next_body, duration_s, timeout_s))
    return outcomes, time.monotonic() - start


def latency_percentiles(outcomes: list[Outcome]) -> dict[str, float]:
    """p50, p95, p99 of the latencies, in milliseconds."""
    cuts = statistics.quantiles([o.latency_s * 1000 for o in outcomes], n=100, method="inclusive")
    return {"p50_ms": cuts[49], "p95_ms": cuts[94], "p99_ms": cuts[98]}
