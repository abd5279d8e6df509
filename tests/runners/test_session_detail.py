"""dsat.log's line for a failed trial: what happened and the error, not the whole tail."""

from __future__ import annotations

from determined_dsat.runners.session import short_detail

TAIL = (
    "out of memory; log tail:\n"
    '[rank0]:   File "train.py", line 84, in train_steps\n'
    "[rank0]:     engine.backward(loss)\n"
    "[rank0]: RuntimeError: [enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: "
    "can't allocate memory\n"
)


def test_a_log_tail_becomes_its_error_line() -> None:
    line = short_detail(TAIL)
    assert "\n" not in line
    assert line.startswith("out of memory: RuntimeError: [enforce fail")
    assert "[rank0]" not in line and "engine.backward" not in line


def test_details_without_a_tail_are_kept() -> None:
    assert short_detail("closed before it reported") == "closed before it reported"
    assert short_detail("timed out; log tail:\n") == "timed out"
