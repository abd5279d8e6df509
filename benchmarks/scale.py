"""Scale: a 1,000-trial replay search per method, timed end to end and per event.

Each of our methods, then each of upstream's (``determined.pytorch.dsat``, determined
0.37.0), searches one synthetic landscape with ``--max-trials 1000
--max-concurrent-trials 64`` through the same ``SearchEngine`` and replay executor. The
time the search method spends in its event handlers is measured per completed trial and
reported as the mean time per event in windows of 100 completed trials, to show whether
it stays flat as trials accumulate. Upstream's runs stop at ``--upstream-cap-s`` seconds.
Usage::

    python -m benchmarks.scale [--landscape 12] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
from determined import searcher

from benchmarks.families.synthetic_family import SyntheticLandscape
from benchmarks.harness import (
    ALL_STAGES,
    METHODS,
    RunResult,
    build_ours,
    drive,
    ds_config_of,
    markdown_table,
    our_executor,
    package_digest,
    quiet,
    write_model_dir,
)
from benchmarks.recording import RecordingExecutor
from benchmarks.upstream import build_upstream
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.testing.synthetic import Landscape

IMPLEMENTATIONS = ("ours", "upstream")
BUILDERS: dict[str, Callable[..., searcher.SearchMethod]] = {
    "ours": build_ours,
    "upstream": build_upstream,
}
SEED = 42
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"


@attrs.frozen
class Timing:
    """One timed search."""

    result: RunResult
    executor_s: float
    stop_message: str | None

    @property
    def trials(self) -> int:
        return len(self.result.trials)

    def window_us(self, size: int) -> list[float]:
        """Mean searcher microseconds per event for each window of ``size`` completions."""
        seconds = np.asarray(self.result.completion_s)
        events = np.asarray(self.result.completion_events)
        out = []
        for start in range(0, len(seconds), size):
            n = int(events[start : start + size].sum())
            out.append(float(seconds[start : start + size].sum()) / max(n, 1) * 1e6)
        return out


@attrs.frozen
class MethodTiming:
    """The repeated timings of one method of one implementation."""

    impl: str
    method: str
    runs: tuple[Timing, ...]

    def median(self, get: Callable[[Timing], float]) -> float:
        return float(np.median([get(t) for t in self.runs]))

    def windows(self, size: int) -> list[float]:
        """Per window, the median over repeats of the mean time per event."""
        per_run = [t.window_us(size) for t in self.runs]
        count = min(len(w) for w in per_run)
        return [float(np.median([w[i] for w in per_run])) for i in range(count)]


def time_one(impl: str, method: str, landscape: Landscape, opts: argparse.Namespace) -> Timing:
    with tempfile.TemporaryDirectory(prefix="dsat-scale-") as tmp:
        model = write_model_dir(pathlib.Path(tmp), landscape.slots)
        search = BUILDERS[impl](
            method,
            model,
            max_trials=opts.max_trials,
            max_concurrent_trials=opts.max_concurrent_trials,
            seed=SEED,
        )
        wrapped = SyntheticLandscape(landscape)
        executor = (
            our_executor(search, wrapped, SEED)
            if isinstance(search, DSATSearchMethod)
            else RecordingExecutor(wrapped, ds_config_of, SEED)
        )
        cap = opts.upstream_cap_s if impl == "upstream" else None
        result = drive(search, executor, time_cap_s=cap)
        stop = getattr(search, "stop_message", None)
        return Timing(result, executor.launch_s, None if stop is None else str(stop))


def time_method(
    impl: str, method: str, landscape: Landscape, opts: argparse.Namespace
) -> MethodTiming:
    runs: list[Timing] = []
    for _ in range(opts.repeats):
        timing = time_one(impl, method, landscape, opts)
        runs.append(timing)
        print(
            f"{impl} {method}: {timing.trials} trials in {timing.result.wall_s:.2f} s "
            f"({timing.result.ended})",
            file=sys.stderr,
        )
        if timing.result.ended == "time cap":
            break  # one capped run says enough
    return MethodTiming(impl, method, tuple(runs))


# ----- reporting -----


def _ended(t: Timing, opts: argparse.Namespace) -> str:
    if t.result.ended == "time cap":
        return f"capped at {opts.upstream_cap_s:.0f} s"
    return t.stop_message or t.result.ended


def totals_table(items: Sequence[MethodTiming], opts: argparse.Namespace) -> list[str]:
    header = [
        "impl",
        "method",
        "repeats",
        "trials run",
        "how it ended",
        "wall s",
        "searcher s",
        "replay s",
        "events",
        "µs/event (all)",
    ]
    rows = []
    for m in items:
        first = m.runs[0]
        rows.append(
            [
                m.impl,
                m.method,
                str(len(m.runs)),
                str(first.trials),
                _ended(first, opts),
                f"{m.median(lambda t: t.result.wall_s):.2f}",
                f"{m.median(lambda t: t.result.searcher_s):.2f}",
                f"{m.median(lambda t: t.executor_s):.2f}",
                str(first.result.events),
                f"{m.median(lambda t: t.result.searcher_s / max(t.result.events, 1) * 1e6):.0f}",
            ]
        )
    return markdown_table(header, rows)


def windows_table(items: Sequence[MethodTiming], size: int) -> list[str]:
    count = max(len(m.windows(size)) for m in items)
    labels = [f"{i * size + 1}–{(i + 1) * size}" for i in range(count)]
    rows = []
    for m in items:
        w = m.windows(size)
        cells = [f"{v:.0f}" for v in w] + ["—"] * (count - len(w))
        rows.append([m.impl, m.method, *cells])
    return markdown_table(["impl", "method", *labels], rows)


def _repeats(n: int) -> str:
    return "1 run per method" if n == 1 else f"{n} repeats per method (medians shown)"


def render(opts: argparse.Namespace, landscape: Landscape, items: Sequence[MethodTiming]) -> str:
    lines = [
        f"# Scale: {opts.max_trials:,}-trial replay searches",
        "",
        f"Landscape {opts.landscape} ({landscape.slots} GPUs per trial, "
        f"{landscape.num_params:.2e} parameters, {landscape.gpu_mem // 1024**3} GiB; largest "
        f"micro-batch that fits per ZeRO stage 1/2/3 with DeepSpeed's default knobs: "
        f"{'/'.join(str(landscape.true_max_mbs(s)) for s in ALL_STAGES)}), --max-trials "
        f"{opts.max_trials}, --max-concurrent-trials {opts.max_concurrent_trials}, ZeRO stages "
        f"1 2 3, metric throughput, random seed {SEED}; "
        f"{_repeats(opts.repeats)}, upstream capped at {opts.upstream_cap_s:.0f} s per run; "
        f"determined_dsat sources {package_digest()}.",
        "",
        "*wall s*: the whole search, end to end; *searcher s*: time inside the search "
        "method's event handlers (and `progress`); *replay s*: the executor evaluating "
        "trials on the landscape; the rest is the engine.",
        "",
        *totals_table(items, opts),
        "",
        f"## Searcher time per event (µs), by window of {opts.window} completed trials",
        "",
        *windows_table(items, opts.window),
        "",
    ]
    return "\n".join(lines)


def to_json(
    opts: argparse.Namespace, landscape: Landscape, items: Sequence[MethodTiming]
) -> dict[str, Any]:
    return {
        "settings": {
            "landscape": opts.landscape,
            "max_trials": opts.max_trials,
            "max_concurrent_trials": opts.max_concurrent_trials,
            "zero_stages": list(ALL_STAGES),
            "seed": SEED,
            "repeats": opts.repeats,
            "window": opts.window,
            "upstream_cap_s": opts.upstream_cap_s,
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "determined_dsat_sources": package_digest(),
        "landscape": {
            "slots": landscape.slots,
            "num_params": landscape.num_params,
            "gpu_mem": landscape.gpu_mem,
            "true_max_mbs": [landscape.true_max_mbs(s) for s in ALL_STAGES],
        },
        "methods": [
            {
                "impl": m.impl,
                "method": m.method,
                "window_us_per_event": [round(x, 1) for x in m.windows(opts.window)],
                "runs": [
                    {
                        "trials": t.trials,
                        "ended": t.result.ended,
                        "stop_message": t.stop_message,
                        "wall_s": t.result.wall_s,
                        "searcher_s": t.result.searcher_s,
                        "replay_s": t.executor_s,
                        "events": t.result.events,
                        "window_us_per_event": [round(x, 1) for x in t.window_us(opts.window)],
                        "completion_us": [round(x * 1e6, 1) for x in t.result.completion_s],
                        "completion_events": list(t.result.completion_events),
                    }
                    for t in m.runs
                ],
            }
            for m in items
        ],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--landscape", type=int, default=12, help="seed of Landscape.draw")
    p.add_argument("--max-trials", type=int, default=1000)
    p.add_argument("--max-concurrent-trials", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    p.add_argument("--window", type=int, default=100, help="completed trials per window")
    p.add_argument("--upstream-cap-s", type=float, default=120.0, help="cap per upstream run")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="results directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    quiet()
    landscape = Landscape.draw(opts.landscape)
    items = [
        time_method(impl, method, landscape, opts) for impl in IMPLEMENTATIONS for method in METHODS
    ]
    report = render(opts, landscape, items)
    print(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "scale.md").write_text(report)
    (opts.out / "scale.json").write_text(json.dumps(to_json(opts, landscape, items), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
