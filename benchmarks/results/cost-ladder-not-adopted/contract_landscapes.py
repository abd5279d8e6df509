# mypy: ignore-errors
# ruff: noqa: E402  (the path and the switches come before the imports they affect)
"""OOM trials and trials run of `model` on the contract suite's 16 landscapes, 4 at once.

Run from the repository root of a tree with change.patch applied, as
``python benchmarks/results/cost-ladder-not-adopted/contract_landscapes.py MODE 16``:
MODE ``both`` runs the change, ``none`` switches the ladder and the batch rule off.
"""

import statistics
import sys

sys.path.insert(0, "tests/methods")
sys.path.insert(0, "tests")
import numpy as np

from determined_dsat.methods.surrogate import acquisition, candidates

mode = sys.argv[1]
if mode in ("noladder", "none"):
    candidates.LADDER = np.zeros(0, dtype=np.int64)
if mode in ("norule", "none"):
    orig = acquisition.Plan.__init__

    def init(self, *a, **k):
        k["min_value"] = 0.0
        orig(self, *a, **k)

    acquisition.Plan.__init__ = init
import test_model_method as t

from determined_dsat.trials.records import Outcome

reached, ooms, ntr = [], [], []
import test_method_contract as mc

for seed in t.SEEDS if len(sys.argv) < 3 else mc.feasible_seeds(int(sys.argv[2])):
    landscape = t.Landscape.draw(seed)
    run = t.run_model(landscape, max_trials=64, max_concurrent_trials=4)
    optimum = landscape.optimum()
    values = []
    for c in run.executor.completions:
        spec = run.method.tracker[c.request_id].spec
        ok = c.result.outcome is Outcome.OK and spec.kind.value == "search"
        values.append(landscape.true_throughput(spec.zero, spec.mbs) if ok else 0.0)
    reached.append(next((i + 1 for i, v in enumerate(values) if (v or 0) >= 0.95 * optimum), 65))
    ooms.append(sum(c.result.outcome is Outcome.OOM for c in run.executor.completions))
    ntr.append(len(run.executor.completions))
print(
    mode,
    "reached",
    reached,
    statistics.median(reached),
    "ooms",
    ooms,
    statistics.median(ooms),
    "trials",
    ntr,
)
