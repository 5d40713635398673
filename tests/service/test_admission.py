"""Admission: max_concurrency requests run, up to max_queue wait in line for a slot, first come
first served, for at most queue_timeout_s; beyond that, 429 at once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from fastapi.testclient import TestClient

from runtime.errors import Cancelled
from service.admission import Admission, Overloaded
from service.app import create_app
from tests.service.conftest import make_settings


def run(coroutine):
    return asyncio.run(coroutine)


def test_admission_free_slot_is_taken_at_once():
    async def main():
        admission = Admission(slots=2, queue=0, timeout=1.0)
        assert await admission.enter() == 0.0 and await admission.enter() == 0.0
        assert (admission.running, admission.waiting) == (2, 0)
        admission.leave()
        assert admission.running == 1

    run(main())


def test_admission_waiting_requests_get_slots_first_come_first_served():
    """A freed slot goes straight to the first in line: as many run as before, never more."""

    async def main():
        admission = Admission(slots=1, queue=3, timeout=5.0)
        await admission.enter()
        order = []

        async def waiter(name):
            await admission.enter()
            order.append(name)

        tasks = []
        for name in "abc":
            tasks.append(asyncio.create_task(waiter(name)))
            await asyncio.sleep(0.01)  # in line in this order
        assert (admission.running, admission.waiting) == (1, 3)
        for expected in ("a", "b", "c"):
            admission.leave()
            await asyncio.sleep(0.01)
            assert order[-1] == expected and admission.running == 1
        await asyncio.gather(*tasks)
        admission.leave()
        assert (admission.running, admission.waiting) == (0, 0)

    run(main())


def test_admission_full_line_is_429_at_once():
    async def main():
        admission = Admission(slots=1, queue=1, timeout=5.0)
        await admission.enter()
        waiting = asyncio.create_task(admission.enter())
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(Overloaded) as caught:
            await admission.enter()
        assert time.monotonic() - started < 0.5  # no wait: the line's timeout is 5 s
        assert (caught.value.status, caught.value.reason) == (429, "queue_full")
        assert caught.value.headers == {"Retry-After": "1"}
        assert caught.value.message == (
            "1 requests are in flight, the limit is 1, and 1 are waiting for a slot, the most "
            "that may wait; retry shortly"
        )
        admission.leave()
        await waiting

    run(main())


def test_admission_without_a_line_says_only_the_limit():
    async def main():
        admission = Admission(slots=1, queue=0, timeout=5.0)
        await admission.enter()
        with pytest.raises(Overloaded) as caught:
            await admission.enter()
        assert caught.value.message == "1 requests are in flight, the limit is 1; retry shortly"

    run(main())


def test_admission_wait_past_the_timeout_is_429_and_leaves_the_line():
    async def main():
        admission = Admission(slots=1, queue=4, timeout=0.2)
        await admission.enter()
        started = time.monotonic()
        with pytest.raises(Overloaded) as caught:
            await admission.enter()
        waited = time.monotonic() - started
        assert waited < 2, waited
        assert caught.value.reason == "queue_timeout"
        assert "no slot came free in 0.2 s of waiting" in caught.value.message
        assert (admission.running, admission.waiting) == (1, 0)

    run(main())


def test_admission_client_that_hangs_up_while_waiting_leaves_the_line():
    """499 within one look at the client, no slot taken: the next in line gets the freed one."""

    async def main():
        admission = Admission(slots=1, queue=2, timeout=5.0)
        await admission.enter()
        hung_up = threading.Event()
        leaving = asyncio.create_task(admission.enter(hung_up))
        staying = asyncio.create_task(admission.enter())
        await asyncio.sleep(0.01)
        hung_up.set()
        with pytest.raises(Cancelled):
            await asyncio.wait_for(leaving, 0.5)
        assert admission.waiting == 1
        admission.leave()
        await asyncio.wait_for(staying, 0.5)
        assert (admission.running, admission.waiting) == (1, 0)

    run(main())


def test_admission_cancelled_waiter_leaves_the_line_and_passes_on_a_slot_it_was_handed():
    async def main():
        admission = Admission(slots=1, queue=2, timeout=5.0)
        await admission.enter()
        first = asyncio.create_task(admission.enter())
        second = asyncio.create_task(admission.enter())
        await asyncio.sleep(0.01)
        admission.leave()  # the slot is handed to `first`...
        first.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 0.5)  # the slot went on
        assert (admission.running, admission.waiting) == (1, 0)
        admission.leave()
        assert admission.running == 0

    run(main())


def test_service_requests_wait_in_line_then_run_and_the_line_has_a_limit(monkeypatch):
    """Through HTTP: with 1 slot and room for 1 to wait, a second request waits for the first
    and then answers 200, a third is turned away at once (429, queue_full), and /metrics shows
    the line and the wait."""
    settings = make_settings(max_concurrency=1, max_queue=1, queue_timeout_s=30)
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.engines["bengio"]
        release, entered = threading.Event(), threading.Event()
        real = engine.next_token

        def held(prompt, top_k):
            entered.set()
            release.wait(10)
            return real(prompt, top_k)

        monkeypatch.setattr(engine, "next_token", held)
        body = {"model": "bengio", "prompt": "Capitu"}
        results = {}

        def post(name):
            results[name] = client.post("/next-token", json=body)

        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert entered.wait(10)
        second = threading.Thread(target=post, args=("second",))
        second.start()
        deadline = time.monotonic() + 10
        while client.app.state.admission.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics = client.get("/metrics").text
        assert "machado_in_flight_requests 1.0" in metrics
        assert "machado_queued_requests 1.0" in metrics
        third = client.post("/next-token", json=body)
        assert third.status_code == 429, third.text
        assert third.json()["error"]["type"] == "overloaded"
        release.set()
        first.join(10)
        second.join(10)
        assert results["first"].status_code == results["second"].status_code == 200
        metrics = client.get("/metrics").text
        assert 'machado_rejected_requests_total{reason="queue_full"} 1.0' in metrics
        assert "machado_queue_wait_seconds_count 2.0" in metrics
        assert (
            "machado_queued_requests 0.0" in metrics and "machado_in_flight_requests 0.0" in metrics
        )
