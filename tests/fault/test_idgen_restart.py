"""Gift ID servers killed, restarted, and restarted with the clock behind their watermark."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from northpole_proc import (
    GENERATE_PATH,
    HEALTH_PATH,
    NorthpoleFactory,
    generate,
    id_lines,
    metric_value,
    now_ms,
    read_watermark,
    squash,
    watermark_path,
    write_watermark,
)

from northpole.idgen import decode

pytestmark = [pytest.mark.fault, pytest.mark.integration]

HOUR_MS = 3_600_000


def _unix_ms(gift_id: int) -> int:
    return decode(gift_id).unix_ms


class _Generating(threading.Thread):
    """Keeps asking a server for IDs until the connection breaks or it is told to stop."""

    def __init__(self, client: httpx.Client, count: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.count = count
        self.received: list[int] = []
        self.batches = 0
        self.enough = threading.Event()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                response = self.client.post(GENERATE_PATH, json={"count": self.count})
                assert response.status_code == 200, response.text
                self.received.extend(int(x) for x in response.json()["ids"])
                self.batches += 1
                if self.batches >= 20:
                    self.enough.set()
        except httpx.TransportError:
            pass  # the server died under us: expected
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.enough.set()


def test_kill_9_mid_generation_then_restart_never_reissues(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    victim = procs.serve(9, data_dir=data)

    with victim.client(timeout=10) as client:
        worker = _Generating(client, 1000)
        worker.start()
        assert worker.enough.wait(30), "the client never got going"
        assert victim.kill() == -signal.SIGKILL
        worker.halt.set()
        worker.join(10)
    assert not worker.is_alive() and worker.error is None, worker.error
    before = worker.received
    assert len(before) >= 20 * 1000 and len(set(before)) == len(before)

    mark = read_watermark(data, 9)
    assert mark > max(_unix_ms(i) for i in before), "an issued ID is stamped at/after the mark"

    survivor = procs.serve(9, data_dir=data)
    with survivor.client() as client:
        after = [i for _ in range(5) for i in generate(client, 4096)]
    assert min(after) > max(before), "the restarted server reissued or went back in time"
    assert not set(after) & set(before)
    assert min(_unix_ms(i) for i in after) >= mark, "an ID stamped before the killed reservation"
    assert {decode(i).workshop_id for i in after} == {9}
    assert read_watermark(data, 9) > max(_unix_ms(i) for i in after)
    assert survivor.stop() == 0


def _assert_refusing(client: httpx.Client) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["parts"]["idgen"]["ready"] is False
    for body in (None, {"count": 1}, {"count": 4096}):
        response = client.post(GENERATE_PATH, json=body)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "clock_moved_backwards"
        retry_after = int(response.headers["Retry-After"])
        assert HOUR_MS / 1000 - 60 < retry_after <= HOUR_MS / 1000, retry_after


def test_restart_with_clock_behind_the_watermark_refuses_ids(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    first = procs.serve(13, data_dir=data)
    before = first.generate(4096)
    assert first.stop() == 0

    # From the restarted process's view its clock is an hour behind what was reserved.
    ahead = now_ms() + HOUR_MS
    write_watermark(data, 13, ahead)
    behind = procs.serve(13, data_dir=data, wait=False)
    assert behind.wait_listening() == 503, str(behind)
    with behind.client() as client:
        deadline = time.monotonic() + 1.0
        while True:  # and it stays that way
            _assert_refusing(client)
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)

        health = client.get(HEALTH_PATH)
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert health.json()["workshop_id"] == 13
        assert health.json()["clock_behind_ms"] > HOUR_MS - 60_000
        assert metric_value(client.get("/metrics").text, "gift_id_generated_total") == 0
    assert read_watermark(data, 13) == ahead, "a refusing server must not move the watermark"
    assert behind.stop() == 0
    assert read_watermark(data, 13) == ahead

    # A normal restart inside the reservation window: start-up waits it out.
    soon = now_ms() + 500
    write_watermark(data, 13, soon)
    after_restart = procs.serve(13, data_dir=data)
    after = after_restart.generate(4096)
    assert min(_unix_ms(i) for i in after) >= soon
    assert min(after) > max(before)
    assert "clock is behind the stored ID watermark" not in after_restart.stdout()


def test_restart_inside_a_long_reservation_waits_before_serving(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    procs.token(data)  # first, so the countdown to the mark covers only the start-up
    # With a 3 s reservation, a mark 2.5 s ahead is an ordinary restart, and start-up
    # (well under 2.5 s here) must wait until the clock passes it before listening.
    mark = now_ms() + 2500
    write_watermark(data, 14, mark)
    server = procs.serve(14, data_dir=data, wait=False, env={"NORTHPOLE_IDGEN__RESERVE_MS": "3000"})
    assert server.wait_listening() == 200, "it should listen only once it can serve"
    assert server.first_response_ms is not None and server.first_response_ms >= mark
    ids = server.generate(4096)
    assert min(_unix_ms(i) for i in ids) >= mark
    assert read_watermark(data, 14) > max(_unix_ms(i) for i in ids)
    assert "clock is behind the stored ID watermark" not in server.stdout()


def test_corrupt_watermark_refuses_to_start(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    path = write_watermark(data, 21, "garbage")

    server = procs.serve(21, data_dir=data, wait=False, with_token=False)
    status = server.wait_exit()
    assert status != 0, str(server)
    assert squash(str(path)) in squash(server.output()), str(server)
    assert "corrupt" in server.output()
    assert watermark_path(data, 21).read_text() == "garbage\n", "it must leave the file alone"

    local = procs.cli("id", "new", "--workshop-id", "21", data_dir=data)
    assert local.returncode == 2, local
    assert squash(str(path)) in squash(local.stderr), local
    assert id_lines(local.stdout) == []


def test_a_server_that_cannot_start_exits_1(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    write_watermark(data, 22, "garbage")
    server = procs.serve(22, data_dir=data, wait=False, with_token=False)
    assert server.wait_exit() == 1
