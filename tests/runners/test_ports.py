"""Ports for concurrent trials: never shared, and a port another program took costs a
restart, not a trial."""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import random
import socket
from collections.abc import Iterator

import pytest
from local_support import fake_executor, gpu_slots

from determined_dsat.runners.ports import NoFreePorts, PortAllocator, port_range
from determined_dsat.trials.records import Outcome


class _FromTheStart(random.Random):
    """Makes an allocator start at the bottom of its range."""

    def randrange(self, *args: int, **kwargs: object) -> int:  # type: ignore[override]
        return 0


def _always_free(port: int) -> bool:
    return True


@contextlib.contextmanager
def squatting(count: int) -> Iterator[int]:
    """Bind ``count`` consecutive ports (as another program would); yields the first."""
    for _ in range(50):
        first = random.randrange(20000, 30000)
        held = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind(("0.0.0.0", port))
                sock.listen()
        except OSError:
            for sock in held:
                sock.close()
            continue
        try:
            yield first
        finally:
            for sock in held:
                sock.close()
        return
    raise AssertionError("found no free run of ports to squat")


def _records(tmp_path: pathlib.Path) -> list[dict[str, object]]:
    path = tmp_path / "run" / "trials" / "ports.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reserved_ports_are_never_handed_out_again() -> None:
    allocator = PortAllocator(40000, 40030, probe=_always_free)
    held = [allocator.reserve(f"t{i}", 3) for i in range(10)]
    assert len({port for ports in held for port in ports}) == 30
    with pytest.raises(NoFreePorts):
        allocator.reserve("t10", 3)
    assert allocator.release("t4") == held[4]
    assert sorted(allocator.reserve("t10", 3)) == sorted(held[4])


def test_a_released_port_waits_for_the_rest_of_the_range() -> None:
    allocator = PortAllocator(40000, 40012, rng=_FromTheStart(), probe=_always_free)
    first = allocator.reserve("a", 3)
    allocator.release("a")
    assert set(allocator.reserve("b", 3)).isdisjoint(first)


def test_ports_in_use_on_the_machine_are_skipped() -> None:
    with squatting(3) as first:
        allocator = PortAllocator(first, first + 6, rng=_FromTheStart())
        assert allocator.reserve("t", 3) == (first + 3, first + 4, first + 5)


def test_thousands_of_running_trials_get_distinct_ports() -> None:
    """The old ``free_ports`` (bind port 0, close) handed the same port to two trials
    whenever the kernel drew it twice; reservations rule that out."""
    allocator = PortAllocator.below_ephemeral()
    drawn = [port for i in range(1000) for port in allocator.reserve(f"t{i}", 3)]
    assert len(set(drawn)) == len(drawn)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("32768\t60999\n", (22768, 32768)), ("1024 65535", (1024, 65536)), ("junk", (22768, 32768))],
)
def test_range_sits_below_the_ephemeral_ports(
    tmp_path: pathlib.Path, text: str, expected: tuple[int, int]
) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text(text)
    assert port_range(path) == expected
    assert port_range(tmp_path / "missing") == (22768, 32768)


def test_concurrent_trials_never_collide(tmp_path: pathlib.Path) -> None:
    """24 fake trials, 8 running at any time, each rank binding its three ports for 1 s."""
    executor = fake_executor(tmp_path, "bind", "1.0", slots=gpu_slots(8))
    launched = 0
    results = []
    while launched < 8:
        executor.launch(f"trial-{launched:02d}", {}, 1)
        launched += 1
    while executor.num_running:
        completion = executor.next_completion()
        results.append(completion.result)
        if launched < 24:
            executor.launch(f"trial-{launched:02d}", {}, 1)
            launched += 1
    assert [r.outcome for r in results] == [Outcome.OK] * 24, [r.detail for r in results]
    assert not list((tmp_path / "run").rglob("*port-clash*"))
    records = _records(tmp_path)
    assert len(records) == 24
    for a in records:
        assert len(set(a["ports"])) == 3  # type: ignore[arg-type]
        for b in records:
            overlap = a["start"] < b["end"] and b["start"] < a["end"]  # type: ignore[operator]
            if a is not b and overlap:
                assert set(a["ports"]).isdisjoint(b["ports"]), (a, b)  # type: ignore[arg-type]


def test_a_port_taken_by_another_program_restarts_the_trial(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with squatting(1) as taken:
        # The check said free (another program bound it right after): the race itself.
        allocator = PortAllocator(taken, taken + 6, rng=_FromTheStart(), probe=_always_free)
        executor = fake_executor(tmp_path, "bind", "0.1", slots=gpu_slots(1), ports=allocator)
        with caplog.at_level(logging.WARNING, logger="determined_dsat"):
            executor.launch("trial-a", {}, 1)
            completion = executor.next_completion()
    assert completion.result.outcome is Outcome.OK, completion.result.detail
    assert executor.num_running == 0
    trial_dir = tmp_path / "run" / "trials" / "trial-a"
    assert "EADDRINUSE" in (trial_dir / "rank0.port-clash-1.log").read_text()
    assert [r["ports"] for r in _records(tmp_path)] == [[taken + 3, taken + 4, taken + 5]]
    (warning,) = [r.getMessage() for r in caplog.records if "other ports" in r.getMessage()]
    assert f"[{taken}, {taken + 1}, {taken + 2}]" in warning and "attempt 2" in warning
    assert allocator.in_use == set()


def test_a_clash_that_persists_is_the_trials_ending(tmp_path: pathlib.Path) -> None:
    with squatting(12) as first:
        allocator = PortAllocator(first, first + 12, rng=_FromTheStart(), probe=_always_free)
        executor = fake_executor(tmp_path, "bind", "0.1", slots=gpu_slots(1), ports=allocator)
        executor.launch("trial-a", {}, 1)
        completion = executor.next_completion()
    assert completion.result.outcome is Outcome.ERROR
    assert "EADDRINUSE" in completion.result.detail
    trial_dir = tmp_path / "run" / "trials" / "trial-a"
    assert sorted(p.name for p in trial_dir.glob("rank0.port-clash-*.log")) == [
        f"rank0.port-clash-{attempt}.log" for attempt in (1, 2, 3)
    ]


def test_a_clash_with_no_ports_left_is_the_trials_ending(tmp_path: pathlib.Path) -> None:
    with squatting(3) as first:
        allocator = PortAllocator(first, first + 3, probe=_always_free)
        executor = fake_executor(tmp_path, "bind", "0.1", slots=gpu_slots(1), ports=allocator)
        executor.launch("trial-a", {}, 1)
        completion = executor.next_completion()
    assert completion.result.outcome is Outcome.ERROR
    assert "EADDRINUSE" in completion.result.detail
    assert executor.num_running == 0
