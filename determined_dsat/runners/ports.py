"""TCP ports for the trials' rendezvous, handed out so that concurrent trials never share one.

A rank binds its ports itself (torch's TCPStore binds ``MASTER_PORT``, Determined's
DistributedContext the two ``INTER_TRAIN_PROCESS_COMM_PORT``s), seconds after the
runner picked them, so a socket cannot be held for it. Instead the allocator

- never hands out a port that a running trial of this runner holds (reserved until the
  runner releases the trial), however many trials start at once;
- draws from just below the kernel's ephemeral range
  (``/proc/sys/net/ipv4/ip_local_port_range``), where outgoing connections — the gloo
  connections of the other trials among them — never take a port;
- walks that range from a random start, so a released port is not handed out again
  until the rest of the range has been, and two runners on one machine start far apart;
- checks that nothing is bound to a port before handing it out.

Another program can still bind a port between the check and the rank's bind; the
local executor recognises that ending (``outcome.port_clash``) and starts the trial
again on other ports, without counting it as a trial.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import pathlib
import random
import socket
import time
from collections.abc import Callable

_EPHEMERAL_RANGE = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range")
_LINUX_EPHEMERAL_LOW = 32768
_SPAN = 10_000
_MIN_SPAN = 1_000
_LOWEST = 1024
# A port a rank could not bind stays out of the draw this long (seconds).
AVOID_S = 300.0


class NoFreePorts(RuntimeError):
    """Every port of the allocator's range is reserved, avoided or bound."""


def port_range(ephemeral: pathlib.Path = _EPHEMERAL_RANGE) -> tuple[int, int]:
    """``[low, high)``: up to 10000 ports just below the ephemeral range; the whole
    unprivileged range when the ephemeral range leaves too little room below it."""
    try:
        low_ephemeral = int(ephemeral.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low_ephemeral = _LINUX_EPHEMERAL_LOW
    if low_ephemeral - _LOWEST < _MIN_SPAN:
        return _LOWEST, 65536
    return max(_LOWEST, low_ephemeral - _SPAN), low_ephemeral


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on every IPv4 (and, where there is IPv6, IPv6)
    address now; without ``SO_REUSEADDR``, so lingering connections count as in use."""
    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, host in families:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no such address family here
        with contextlib.closing(sock):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue  # IPv6 disabled
                return False
    return True


class PortAllocator:
    """Reserves ports per owner (a trial) until the owner is released; see the module
    docstring. ``probe`` says whether a port is free on the machine (tests replace it)."""

    def __init__(
        self,
        low: int,
        high: int,
        rng: random.Random | None = None,
        probe: Callable[[int], bool] = port_is_free,
    ) -> None:
        assert 0 < low < high <= 65536, (low, high)
        self._low, self._high = low, high
        self._next = low + (rng or random.Random()).randrange(high - low)
        self._probe = probe
        self._held: dict[str, tuple[int, ...]] = {}
        self._avoid_until: dict[int, float] = {}

    @classmethod
    def below_ephemeral(cls) -> PortAllocator:
        return cls(*port_range())

    @property
    def in_use(self) -> set[int]:
        """Every port reserved now."""
        return {port for ports in self._held.values() for port in ports}

    def reserve(self, owner: str, count: int) -> tuple[int, ...]:
        """``count`` distinct free ports for ``owner`` (added to what it holds already)."""
        taken = self.in_use
        now = time.monotonic()
        found: list[int] = []
        for _ in range(self._high - self._low):
            port = self._next
            self._next = self._low if port + 1 >= self._high else port + 1
            if port in taken or self._avoid_until.get(port, 0.0) > now:
                continue
            if self._probe(port):
                found.append(port)
                if len(found) == count:
                    self._held[owner] = (*self._held.get(owner, ()), *found)
                    return tuple(found)
        raise NoFreePorts(
            f"no {count} free TCP port(s) in {self._low}-{self._high - 1} "
            f"({len(taken)} held by running trials)"
        )

    def release(self, owner: str) -> tuple[int, ...]:
        """Return ``owner``'s ports to the pool; the ports it held."""
        return self._held.pop(owner, ())

    def avoid(self, ports: tuple[int, ...], for_s: float = AVOID_S) -> None:
        """Keep ``ports`` (that someone else bound) out of the draw for ``for_s`` seconds."""
        until = time.monotonic() + for_s
        for port in ports:
            self._avoid_until[port] = until


_ANONYMOUS = itertools.count()


@functools.cache
def shared_allocator() -> PortAllocator:
    """This process's allocator: every executor in one runner draws from it."""
    return PortAllocator.below_ephemeral()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, reserved in this process for good (benchmarks)."""
    return list(shared_allocator().reserve(f"anonymous-{next(_ANONYMOUS)}", count))
