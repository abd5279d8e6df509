"""A stand-in for a user's training script, run by the local executor as a trial rank.

``python3 fake_rank.py MODE [SECONDS]``; in every mode but ``sleep``, rank 0 binds the
trial's three ports the way its servers would (torch's TCPStore binds ``MASTER_PORT`` on every
address; Determined's DistributedContext the two comm ports), holds them for SECONDS,
records them in ``ports.jsonl`` beside the trial directory, and exits 0. Every mode
first prints ``env {...}``: the variables the runner sets for its devices, op cache and
ports. A port that
cannot be bound ends the rank with torch's EADDRINUSE message and exit code 1.

- ``bind``: as above.
- ``clash-once``: the first attempt of a trial fails as if its port were taken.
- ``sleep``: print the pid and sleep SECONDS (an orphan candidate).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import sys
import time

PORT_VARS = ("MASTER_PORT", "INTER_TRAIN_PROCESS_COMM_PORT_1", "INTER_TRAIN_PROCESS_COMM_PORT_2")


def _fail_like_torch(port: int) -> None:
    print(
        "torch.distributed.DistNetworkError: The server socket has failed to listen on any "
        f"local network address. port: {port}, useIpv6: false, code: -98, name: EADDRINUSE, "
        "message: address already in use",
        flush=True,
    )
    sys.exit(1)


def _bind(seconds: float) -> None:
    if os.environ.get("RANK") != "0":  # the chief's servers own the trial's ports
        time.sleep(seconds)
        return
    ports = [int(os.environ[name]) for name in PORT_VARS]
    sockets = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            _fail_like_torch(port)
        sock.listen()
        sockets.append(sock)
    started = time.time()
    time.sleep(seconds)
    record = {
        "trial": pathlib.Path.cwd().name,
        "ports": ports,
        "start": started,
        "end": time.time(),
    }
    with (pathlib.Path.cwd().parent / "ports.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")


def main(argv: list[str]) -> None:
    shown = ("CUDA_VISIBLE_DEVICES", "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", *PORT_VARS)
    print("env " + json.dumps({name: os.environ.get(name) for name in shown}), flush=True)
    mode = argv[0]
    seconds = float(argv[1]) if len(argv) > 1 else 0.5
    if mode == "sleep":
        print(f"pid {os.getpid()}", flush=True)
        time.sleep(seconds)
        return
    if mode == "clash-once":
        marker = pathlib.Path("clashed-once")
        if not marker.exists():
            marker.touch()
            _fail_like_torch(int(os.environ["MASTER_PORT"]))
    _bind(seconds)


if __name__ == "__main__":
    main(sys.argv[1:])
