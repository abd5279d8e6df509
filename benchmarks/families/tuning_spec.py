"""What a tuning landscape is made of: the model, the cluster and the drawn physics constants.

A landscape of the tuning family is a dense GPT-style decoder (pre-LayerNorm blocks with
biases, rotary positions so no position table, LM head tied to the embedding) trained with
Adam in bf16 mixed precision on ``slots`` GPUs of one type. Sizes are in elements or bytes,
times in seconds, bandwidths in bytes per second.
"""

from __future__ import annotations

import functools

import attrs

GIB = 1024**3

ATTENTION_BYTES_PER_TOKEN_HIDDEN = 34
"""Bytes a transformer layer saves per token and hidden unit in 16-bit training, leaving
the attention-score terms aside (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", arXiv:2205.05198, eq. 1)."""

SCORE_BYTES_PER_HEAD_TOKEN_PAIR = 5
"""Bytes per head and (query, key) pair saved by eager attention: scores, softmax and the
dropout mask (same paper). Flash attention saves none of them."""


@attrs.frozen
class ModelShape:
    """The transformer: depth, width, attention heads, tokens per sample and vocabulary."""

    layers: int
    hidden: int
    heads: int
    seq: int
    vocab: int
    flash_attention: bool
    checkpointing: bool  # activation checkpointing of every block
    fp32_logits_in_forward: bool  # the model up-casts the logits before its loss

    @functools.cached_property
    def layer_tensors(self) -> tuple[tuple[str, int], ...]:
        """(module, elements) of each parameter tensor of one block."""
        h = self.hidden
        return (
            ("qkv", 3 * h * h),
            ("qkv", 3 * h),
            ("out", h * h),
            ("out", h),
            ("fc1", 4 * h * h),
            ("fc1", 4 * h),
            ("fc2", 4 * h * h),
            ("fc2", h),
            ("ln1", h),
            ("ln1", h),
            ("ln2", h),
            ("ln2", h),
        )

    @functools.cached_property
    def global_tensors(self) -> tuple[tuple[str, int], ...]:
        """(module, elements) of the parameter tensors outside the blocks."""
        return (
            ("embedding", self.vocab * self.hidden),
            ("ln_f", self.hidden),
            ("ln_f", self.hidden),
        )

    @functools.cached_property
    def num_params(self) -> int:
        """Parameters (elements), the tied LM head counted once."""
        per_layer = sum(n for _, n in self.layer_tensors)
        return self.layers * per_layer + sum(n for _, n in self.global_tensors)

    @functools.cached_property
    def largest_module(self) -> int:
        """Elements of the largest module ZeRO-3 gathers at once (the embedding or fc1)."""
        return max(self.vocab * self.hidden, 4 * self.hidden * self.hidden + 4 * self.hidden)

    @property
    def mean_linear(self) -> int:
        """Mean elements of a block's linear layers (what one ZeRO-3 fetch brings)."""
        return 3 * self.hidden * self.hidden

    def flops_per_token(self) -> float:
        """Executed FLOPs per token of one training step (forward, backward, recompute).

        6 per parameter per token plus attention scores, 12 * layers * seq * hidden
        (Narayanan et al. 2021, arXiv:2104.04473); checkpointing adds a forward pass."""
        forward = 2.0 * self.num_params + 4.0 * self.layers * self.seq * self.hidden
        return forward * (4.0 if self.checkpointing else 3.0)

    def model_flops_per_token(self) -> float:
        """FLOPs per token a FLOPs profiler credits (no recompute)."""
        return 3.0 * (2.0 * self.num_params + 4.0 * self.layers * self.seq * self.hidden)

    def full_layer_bytes(self) -> float:
        """Bytes one block's forward keeps for backward, per sample, without checkpointing."""
        s, h = self.seq, self.hidden
        scores = 0 if self.flash_attention else SCORE_BYTES_PER_HEAD_TOKEN_PAIR * self.heads * s * s
        return float(ATTENTION_BYTES_PER_TOKEN_HIDDEN * s * h + scores)

    def forward_bytes(self) -> float:
        """Per-sample bytes the forward pass leaves allocated: what DeepSpeed's profile sees.

        Saved activations of every block (only the block inputs when checkpointing), the
        embedding output and the logits (bf16, plus an fp32 copy when the model up-casts)."""
        s, h = self.seq, self.hidden
        stored = 2.0 * s * h if self.checkpointing else self.full_layer_bytes()
        logits = self.vocab * s * (6.0 if self.fp32_logits_in_forward else 2.0)
        return self.layers * stored + 2.0 * s * h + logits


@attrs.frozen
class Gpu:
    """One accelerator type."""

    name: str
    memory_bytes: int
    peak_flops: float  # dense bf16, FLOP/s
    hbm_bytes_per_s: float
    nvlink: bool


@attrs.frozen
class Cluster:
    """The GPUs of one trial: ``slots`` of one type; 16 slots span two nodes of 8."""

    gpu: Gpu
    slots: int
    intra_bytes_per_s: float  # ring bus bandwidth inside a node
    inter_bytes_per_s: float  # ring bus bandwidth across nodes (about 10x slower)
    hop_latency_s: float  # per ring step inside a node
    inter_hop_latency_s: float
    pcie_bytes_per_s: float  # host <-> device, per GPU
    cpu_adam_params_per_s: float  # DeepSpeed's CPU Adam, per trial process

    @property
    def nodes(self) -> int:
        """Machines the trial spans."""
        return 2 if self.slots > 8 else 1

    @property
    def bus_bytes_per_s(self) -> float:
        """Bandwidth of a ring over all ranks: the slowest link in it."""
        return self.inter_bytes_per_s if self.nodes > 1 else self.intra_bytes_per_s

    @property
    def ring_hop_s(self) -> float:
        """Latency of one ring step."""
        return self.inter_hop_latency_s if self.nodes > 1 else self.hop_latency_s


@attrs.frozen
class Behaviour:
    """Drawn constants of the software stack: memory overheads, efficiencies, latencies."""

    context_bytes: float  # CUDA context, cuBLAS workspace, NCCL buffers
    activation_ratio: float  # true per-sample memory / profiled forward memory
    natural_activation_ratio: float  # what the physics gave before a sweep overrode it
    grad_fragmentation: float  # extra share of gradient memory without contiguous_gradients
    peak_efficiency: float  # share of peak FLOP/s reached by a saturating micro-batch
    half_tokens: float  # tokens per micro-batch at which half of that share is reached
    launch_s_fixed: float  # CPU time per micro-batch outside the blocks
    launch_s_per_layer: float  # CPU kernel-launch time per block and micro-batch
    grad_hook_s: float  # ZeRO 1/2 gradient hook, per parameter tensor and backward
    module_hook_s: float  # ZeRO-3 pre/post hook, per module and pass
    zero3_overhead: float  # ZeRO-3's GPU-side extra: gathered-weight copies, allocations
    collective_call_s: float  # DeepSpeed's fixed cost of one bucketed collective
    overlap_slowdown: float  # compute slowdown while NCCL kernels share the SMs
    reduce_scatter_inefficiency: float  # DeepSpeed's reduce-based scatter vs a ring
    step_overhead_s: float  # engine bookkeeping per optimizer step
    flush_headroom: float  # free share of GPU memory below which the allocator flushes
    flush_cost: float  # step-time penalty at zero headroom
    flush_power: float  # how sharply the penalty rises as headroom shrinks
    startup_s: float  # process launch, DeepSpeed init
    startup_s_per_billion: float  # model build and ZeRO partitioning, per 1e9 parameters
    noise: float  # relative standard deviation of one throughput measurement


@attrs.frozen
class TuningSpec:
    """Everything a landscape needs, drawn from one seed."""

    seed: int
    model: ModelShape
    cluster: Cluster
    behaviour: Behaviour

    @property
    def key(self) -> str:
        """The landscape's stable name."""
        return f"tuning-{self.seed:02d}"

    def profile_activation_bytes(self) -> int:
        """``activation_mem_per_gpu``: the forward pass at micro-batch 1 (bytes)."""
        return int(self.model.forward_bytes())

    def per_sample_bytes(self) -> float:
        """True peak memory added by one more sample in a micro-batch (bf16 activations)."""
        return self.behaviour.activation_ratio * self.profile_activation_bytes()
