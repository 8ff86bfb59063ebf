"""The persistence and transport pieces on their own: group commit, jobs, the ledger, the lean client."""

from __future__ import annotations

import asyncio
import json

import pytest

from loadtests.service.httpclient import HttpClient, HttpError, WorkerClient
from loadtests.service.store import LEDGER_SCHEMA, SqlLedger, Store, ledger_summary
from sim.domain.ledger import CHARGE, REFUND, Txn, UnbalancedTransaction, transfer

SCHEMA = LEDGER_SCHEMA + "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT);"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "t.db", SCHEMA)
    yield s
    s.close()


def test_group_commit_isolates_a_failing_transaction(store):
    """Transactions of one event-loop turn share a commit; one that raises is rolled back alone, and
    durable() returns only once the rest is committed."""

    async def scenario() -> list:
        with store.tx() as c:
            c.execute("INSERT INTO kv VALUES ('a', '1')")
            store.emit(1.0, "x.one", "test", "o1")
        with pytest.raises(RuntimeError):
            with store.tx() as c:
                c.execute("INSERT INTO kv VALUES ('b', '2')")
                store.emit(2.0, "x.two", "test", "o2")
                raise RuntimeError("boom")
        assert store._batch_open  # not committed yet: the same turn of the loop
        await store.durable()
        assert not store._batch_open
        return [r[0] for r in store.all("SELECT k FROM kv")]

    assert asyncio.run(scenario()) == ["a"]
    events = [json.loads(line) for chunk in store.history_chunks() for line in chunk.splitlines()]
    assert [e["type"] for e in events] == ["x.one"]


def test_first_transaction_of_a_batch_rolls_back_alone(store):
    """The first transaction of a turn has no savepoint of its own: when it raises, the batch is
    rolled back (it held nothing else), and the next transaction of the same turn commits as usual."""

    async def scenario() -> list:
        with pytest.raises(RuntimeError):
            with store.tx() as c:
                c.execute("INSERT INTO kv VALUES ('a', '1')")
                store.emit(1.0, "x.one", "test", "o1")
                raise RuntimeError("boom")
        assert not store._batch_open and not store.conn.in_transaction
        with store.tx() as c:
            c.execute("INSERT INTO kv VALUES ('b', '2')")
            store.emit(2.0, "x.two", "test", "o2")
        with store.tx() as c:
            c.execute("INSERT INTO kv VALUES ('c', '3')")
        await store.durable()
        assert not store._batch_open
        return [r[0] for r in store.all("SELECT k FROM kv ORDER BY k")]

    assert asyncio.run(scenario()) == ["b", "c"]
    events = [json.loads(line) for chunk in store.history_chunks() for line in chunk.splitlines()]
    assert [e["type"] for e in events] == ["x.two"]


def test_jobs_reach_the_scheduler_only_after_commit(store):
    """A scheduled job is pushed to the scheduler by the commit, never before (nor after a rollback)."""
    pushed: list = []

    class Recorder:
        def push(self, job):
            pushed.append(job.key)

    store.scheduler = Recorder()

    async def scenario() -> None:
        with store.tx():
            store.schedule("notify", "n1", 0.0)
        assert pushed == []
        with pytest.raises(ValueError):
            with store.tx():
                store.schedule("notify", "n2", 0.0)
                raise ValueError
        await store.durable()

    asyncio.run(scenario())
    assert pushed == ["n1"]
    assert [j.key for j in store.load_jobs()] == ["n1"]


def test_ledger_posts_once_and_refuses_unbalanced(store):
    """A txn id posts once (a replay is a no-op); postings that do not sum to zero are refused."""
    with store.tx():
        ledger = SqlLedger(store, 1.0, "o1", "bank", trade="t1")
        assert ledger.post(transfer("t1-charge", CHARGE, "user:u", "clearing", 500))
        assert not ledger.post(transfer("t1-charge", CHARGE, "user:u", "clearing", 500))
        with pytest.raises(UnbalancedTransaction):
            ledger.post(Txn("bad", REFUND, (("clearing", -5), ("user:u", 4))))
    summary = ledger_summary(store)
    assert summary["balanced"] and summary["balances"] == {"user:u": -500, "clearing": 500}


def test_history_is_exported_in_time_order(store):
    """Events written out of order (an attempt's start recorded with its result) come out sorted by t."""
    with store.tx():
        store.emit(5.0, "late", "test", "o")
        store.emit(1.0, "early", "test", "o")
    with store.tx():
        store.emit(3.0, "middle", "test", "o")
    types = [json.loads(l)["type"] for chunk in store.history_chunks(chunk=2) for l in chunk.splitlines()]
    assert types == ["early", "middle", "late"]


async def _serve(responses: list[bytes]):
    """A raw HTTP server answering each request with the next canned response."""
    answers = iter(responses)
    connections = []

    async def handle(reader, writer):
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
                await reader.readexactly(length[0] if length else 0)
                writer.write(next(answers))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


def test_lean_client_keep_alive_chunked_and_close():
    """Content-Length and chunked bodies, connection reuse, Connection: close, refused connections."""

    async def scenario() -> None:
        server, port, connections = await _serve([
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsuc\r\n4\r\ncess\r\n0\r\n\r\n",
            b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
            b'HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\n{"a": 1}',
        ])
        client = HttpClient()
        url = f"http://127.0.0.1:{port}/notify"
        first = await client.request("POST", url, b"{}")
        second = await client.request("POST", url, b"{}")
        assert (first.status, first.body, second.body) == (200, b"success", b"success")
        assert len(connections) == 1  # kept alive
        third = await client.request("POST", url, b"{}")
        assert (third.status_code, third.text) == (500, "no")
        fourth = await client.request("GET", url)
        assert fourth.json() == {"a": 1} and len(connections) == 2  # a new connection after close
        await client.aclose()
        server.close()
        await server.wait_closed()
        with pytest.raises(HttpError):
            await HttpClient().request("GET", url, timeout=2)

    asyncio.run(scenario())


def test_client_timeout_body_limit_and_stale_connection():
    """A silent server times out as HttpError; an answer over the body limit (declared or chunked) is
    refused; a pooled connection the server closed is replaced once, transparently."""

    async def scenario() -> None:
        silent = await asyncio.start_server(lambda r, w: asyncio.sleep(5), "127.0.0.1", 0)
        client = HttpClient(max_body=16)
        with pytest.raises(HttpError, match="timed out"):
            await client.request("POST", f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}/", b"{}",
                                 timeout=0.3)
        silent.close()
        server, port, connections = await _serve([
            b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n" + b"x" * 17,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n" + b"y" * 17 + b"\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        url = f"http://127.0.0.1:{port}/n"
        for _ in range(2):
            with pytest.raises(HttpError, match="exceeds the limit"):
                await client.request("POST", url, b"{}")
        assert (await client.request("POST", url, b"{}")).body == b"ok"
        connections[-1].close()  # the server drops the idle keep-alive connection
        await asyncio.sleep(0.05)
        assert (await client.request("POST", url, b"{}")).text == "ok"
        with pytest.raises(HttpError, match="only http"):
            await client.request("GET", "ftp://127.0.0.1/x")
        await client.aclose()
        server.close()

    asyncio.run(scenario())


def test_worker_client_answers_fails_and_restarts():
    """The worker-process client gives the same answers and errors, and survives its child's death."""

    async def scenario() -> None:
        server, port, _ = await _serve([b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess"] * 3)
        url = f"http://127.0.0.1:{port}/notify"
        client = WorkerClient()
        first = await client.request("POST", url, b'{"a":1}', {"Content-Type": "application/json"}, timeout=5)
        assert (first.status, first.body) == (200, b"success")
        with pytest.raises(HttpError, match="only http"):
            await client.request("GET", "ftp://127.0.0.1/x")
        client._proc.kill()  # the child dies: a new one serves the next request
        await client._proc.wait()
        second = await client.request("POST", url, b"{}", timeout=5)
        assert second.text == "success"
        await client.aclose()
        server.close()
        gone = WorkerClient()
        with pytest.raises(HttpError):
            await gone.request("GET", url, timeout=2)  # refused: the server is gone
        await gone.aclose()

    asyncio.run(scenario())


def test_a_draw_follows_overrides_replaced_many_times():
    """Conditions.sample after set_overrides draws from the distribution now in force, however often
    the overrides are replaced (a sampler cached by the id of a scenario that was freed, and whose id
    a new scenario got, would draw from the old one)."""
    import time

    from loadtests.service.runtime import Clock, Conditions
    from sim.scenario import default_scenario

    conditions = Conditions(default_scenario(), Clock(time.time(), 60.0), "provider")
    for i in range(200):
        latency = 1.0 + i % 7
        conditions.set_overrides({"bank.latency": f"{latency:g}s"})
        assert conditions.sample("bank.latency") == latency, i


def test_a_job_in_a_modelled_wait_gives_its_slot_back(store):
    """``Scheduler.unslotted``: jobs waiting out a modelled delay hold none of the scheduler's slots (more
    of them wait at once than there are slots, and a job of real work still gets one), each takes a slot
    again to go on, and the slots all come back whether the jobs end or are stopped mid-wait. A task a
    job spawns, or code outside a job, gives nothing back (it holds nothing)."""
    from loadtests.service.runtime import Clock
    from loadtests.service.store import Scheduler

    gate, done, seen = asyncio.Event(), [], {}

    async def waits(job) -> None:
        async with sched.unslotted():
            await gate.wait()
        seen.setdefault("slots_after_wait", []).append(sched.counts()["in_slots"])
        done.append(job.key)

    async def works(job) -> None:
        seen["while_waiting"] = sched.counts()
        done.append(job.key)

    async def spawns(job) -> None:
        async def child() -> None:
            async with sched.unslotted():  # not the job's own task: a no-op
                seen["child"] = sched.counts()
        await asyncio.get_running_loop().create_task(child())
        done.append(job.key)

    sched = Scheduler(store, Clock(0.0, 1.0), {"wait": waits, "work": works, "spawn": spawns}, concurrency=2)

    async def until(predicate) -> None:
        for _ in range(2000):
            if predicate():
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"not reached: {sched.counts()}, done {done}")

    async def scenario() -> None:
        runner = asyncio.get_running_loop().create_task(sched.run())
        async with sched.unslotted():  # outside any job: nothing to give back
            assert sched.counts()["modelled_waits"] == 0
        with store.tx():
            for i in range(5):
                store.schedule("wait", f"w{i}", 0.0)
        await until(lambda: sched.counts()["modelled_waits"] == 5)
        assert sched.counts()["in_slots"] == 0 and sched._sem._value == 2
        with store.tx():
            store.schedule("work", "real", 0.0)
        await until(lambda: "real" in done)
        assert seen["while_waiting"] == {"queued": 0, "in_slots": 1, "modelled_waits": 5}  # its own slot
        with store.tx():
            store.schedule("spawn", "parent", 0.0)
        await until(lambda: "parent" in done)
        assert seen["child"] == {"queued": 0, "in_slots": 1, "modelled_waits": 5}  # the parent's slot kept
        gate.set()
        await until(lambda: len(done) == 7)
        assert max(seen["slots_after_wait"]) <= 2  # each took a slot again, never more than there are
        assert sched.counts() == {"queued": 0, "in_slots": 0, "modelled_waits": 0} and sched._sem._value == 2
        # stopped while jobs wait: they end without a slot, and none is given back twice
        gate.clear()
        with store.tx():
            for i in range(3):
                store.schedule("wait", f"s{i}", 0.0)
        await until(lambda: sched.counts()["modelled_waits"] == 3)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await sched.stop()
        assert sched.counts() == {"queued": 0, "in_slots": 0, "modelled_waits": 0} and sched._sem._value == 2
        assert sorted(j.key for j in store.load_jobs()) == ["s0", "s1", "s2"]  # still to do after a restart

    asyncio.run(scenario())
