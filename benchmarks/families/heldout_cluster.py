"""The held-out family's clusters: GPUs, interconnects, and the quirks of one training setup.

GPU figures are public datasheet values (dense bf16 tensor FLOP/s, HBM bandwidth) and the
``total_memory`` PyTorch reports; bus bandwidths are what NCCL's ring collectives reach in
practice (NVLink boxes, PCIe boxes), and two nodes talk about 10x slower than GPUs in one.
"""

from __future__ import annotations

import attrs
import numpy as np

MIB = 1 << 20
GIB = 1 << 30
GPUS_PER_NODE = 8


@attrs.frozen
class GpuType:
    name: str
    memory: int  # bytes, as torch.cuda.get_device_properties reports
    peak_flops: float  # dense bf16 tensor-core FLOP/s (TF32 is half of it)
    hbm: float  # bytes/s
    bus: tuple[float, float]  # range of the intra-node collective bus bandwidth, bytes/s
    efficiency: tuple[float, float]  # range of the fraction of peak large GEMMs reach


GPU_TYPES = (
    GpuType("A10-24GB", 23_028 * MIB, 125e12, 600e9, (6e9, 12e9), (0.6, 0.75)),
    GpuType("A100-40GB", 40_536 * MIB, 312e12, 1.555e12, (100e9, 180e9), (0.6, 0.75)),
    GpuType("A100-80GB", 81_920 * MIB, 312e12, 2.039e12, (130e9, 200e9), (0.6, 0.75)),
    GpuType("H100-80GB", 81_559 * MIB, 989e12, 3.35e12, (250e9, 380e9), (0.45, 0.6)),
)
_GPU_WEIGHTS = (0.25, 0.3, 0.25, 0.2)
SLOT_CHOICES = (1, 2, 4, 8, 16)
_SLOT_WEIGHTS = (0.1, 0.1, 0.2, 0.35, 0.25)


@attrs.frozen
class Cluster:
    """One trial's GPUs and how they talk; per-landscape constants of the physics."""

    gpu: GpuType
    slots: int
    bus: float  # bytes/s of the collectives' slowest link (inter-node when slots > 8)
    call_latency: float  # s per collective call, DeepSpeed's bucket bookkeeping included
    gemm_efficiency: float  # fraction of peak of large GEMMs
    half_rows: float  # x 128 * sqrt(4096 / width): GEMM rows at half the kernels' efficiency
    launch_s: float  # CPU time per module and pass (kernel launches, autograd)
    hook_s: float  # ZeRO-3's hooks per module and pass (fetch, wait, release): on the critical path
    grad_hook_s: float  # ZeRO-1/2's bookkeeping per gradient tensor (bucket, copy, release)
    context_bytes: int  # CUDA context, cuBLAS workspaces, NCCL buffers: outside the allocator
    prefetch_hiding: float  # the most of a ZeRO-3 gather prefetching hides behind compute
    overlap_interference: float  # compute slowdown per second of communication it overlaps
    cpu_adam: float  # parameters/s DeepSpeedCPUAdam updates per node
    pcie: float  # bytes/s between one GPU and host memory

    @property
    def nodes(self) -> int:
        return 1 if self.slots <= GPUS_PER_NODE else self.slots // GPUS_PER_NODE


def draw_cluster(rng: np.random.Generator) -> Cluster:
    """A GPU type, 1 to 16 slots (16 = two nodes of 8) and its interconnect."""
    gpu = GPU_TYPES[int(rng.choice(len(GPU_TYPES), p=np.asarray(_GPU_WEIGHTS)))]
    slots = SLOT_CHOICES[int(rng.choice(len(SLOT_CHOICES), p=np.asarray(_SLOT_WEIGHTS)))]
    bus = float(rng.uniform(*gpu.bus))
    latency = float(rng.uniform(0.15e-3, 0.5e-3))
    context = rng.uniform(0.7, 1.5) * GIB
    if slots > GPUS_PER_NODE:
        bus /= float(rng.uniform(7.0, 13.0))
        latency += float(rng.uniform(0.05e-3, 0.15e-3))
        context += 0.2 * GIB  # NCCL's inter-node channels
    return Cluster(
        gpu=gpu,
        slots=slots,
        bus=bus,
        call_latency=latency,
        gemm_efficiency=float(rng.uniform(*gpu.efficiency)),
        half_rows=float(rng.uniform(0.6, 1.4) * (2.0 if gpu.name.startswith("H100") else 1.0)),
        launch_s=float(rng.uniform(10e-6, 30e-6)),
        hook_s=float(rng.uniform(100e-6, 250e-6)),
        grad_hook_s=float(rng.uniform(20e-6, 60e-6)),
        context_bytes=int(context),
        prefetch_hiding=float(rng.uniform(0.4, 0.8)),
        overlap_interference=float(rng.uniform(0.05, 0.15)),
        cpu_adam=float(rng.uniform(0.8e9, 2.5e9)),
        pcie=float(rng.uniform(10e9, 22e9)),
    )


@attrs.frozen
class Quirks:
    """What makes one training setup differ from the textbook.

    ``fragmentation``: the caching allocator's reserve over live activation bytes.
    ``flush_onset``/``flush_penalty``: above this fraction of GPU memory the allocator
    frees its cache and retries (``num_alloc_retries``), slowing steps by up to the penalty.
    ``knee_mbs``/``knee_slope``: above this micro-batch, kernels fall out of cache-friendly
    shapes and lose ``knee_slope`` of their speed per doubling (inf: no knee).
    """

    fragmentation: float
    flush_onset: float
    flush_penalty: float
    knee_fraction: float  # of the largest micro-batch that fits; inf: no knee
    knee_slope: float
    noise_sd: float
    noise_dof: float  # Student-t degrees of freedom of the noise; inf: Gaussian
    startup_base_s: float
    startup_per_gparam_s: float
    warmup_s: float


def draw_quirks(rng: np.random.Generator) -> Quirks:
    """The allocator, cache, noise and start-up constants of one landscape."""
    cache_sensitive = rng.random() < 0.35
    heavy_tailed = rng.random() < 0.2
    return Quirks(
        fragmentation=float(rng.uniform(1.03, 1.10)),
        flush_onset=float(rng.uniform(0.90, 0.97)),
        flush_penalty=float(rng.uniform(0.05, 0.25)),
        knee_fraction=float(rng.uniform(0.15, 0.6)) if cache_sensitive else float("inf"),
        knee_slope=float(rng.uniform(0.06, 0.2)),
        noise_sd=float(np.clip(np.exp(rng.normal(np.log(0.025), 0.25)), 0.01, 0.05)),
        noise_dof=5.0 if heavy_tailed else float("inf"),
        startup_base_s=float(rng.uniform(15.0, 30.0)),
        startup_per_gparam_s=float(rng.uniform(9.0, 13.0)),
        warmup_s=float(rng.uniform(3.0, 10.0)),
    )
