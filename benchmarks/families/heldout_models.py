"""The held-out family's models: parameter layout, FLOPs and activation bytes per sample.

Every model is described the way its training step sees it: groups of identical modules
(each a tuple of parameter-tensor sizes, which ZeRO-3's persistence threshold and gathers
act on), forward and backward FLOPs per sample, and the bytes one sample keeps alive:
``saved_bytes`` is what the forward pass leaves allocated (what DeepSpeed 0.19.8's
model-info profile measures at micro-batch 1), ``backward_bytes`` what the backward pass
adds at its peak (activation gradients, the logits' gradient, recomputed layers).

Transformer activation bytes follow Korthikanti et al., "Reducing Activation Recomputation
in Large Transformer Models" (arXiv:2205.05198): ``s*h*(34 + 5*a*s/h)`` bytes per layer and
sample in 16-bit, without the attention-score term when flash attention is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

Rng = np.random.Generator


@attrs.frozen
class ModuleGroup:
    """``count`` identical modules, each holding parameter tensors of these sizes (elements).

    ``in_stack``: part of the repeated layer stack (ZeRO-3 prefetches it layer by layer);
    ``trainable``: False for a frozen part (no gradients, no optimizer states, no backward).
    """

    tensors: tuple[int, ...]
    count: int
    in_stack: bool = True
    trainable: bool = True

    @property
    def numel(self) -> int:
        return sum(self.tensors) * self.count


@attrs.frozen(cache_hash=True)
class ModelSpec:
    """One model as a training step sees it (per sample; bytes, FLOPs)."""

    kind: str
    groups: tuple[ModuleGroup, ...]
    layers: int  # repeated blocks of the stack
    trainable_layers: int  # of them, the ones backward runs through
    fwd_flops: float  # per sample
    bwd_flops: float  # per sample, recomputation included
    tokens: int  # GEMM rows per sample (sequence length, pixels, ...)
    width: int  # the GEMMs' inner size (hidden size, MLP width, channels)
    saved_bytes: float  # forward activations alive at the end of forward, per sample
    backward_bytes: float  # extra bytes at the backward peak, per sample
    traffic_bytes: float  # HBM traffic of element-wise kernels, forward + backward, per sample
    gemm_efficiency: float  # fraction of the GPU's peak its GEMMs/convolutions reach
    precision: str  # "bf16" (mixed precision) or "fp32"
    facts: dict[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def weight_bytes(self) -> int:
        """Bytes of one parameter or gradient element (2 in bf16, 4 in fp32)."""
        return 2 if self.precision == "bf16" else 4

    @functools.cached_property
    def total_params(self) -> int:
        return sum(g.numel for g in self.groups)

    @functools.cached_property
    def trainable_params(self) -> int:
        return sum(g.numel for g in self.groups if g.trainable)

    @functools.cached_property
    def module_count(self) -> int:
        return sum(g.count for g in self.groups)

    @functools.cached_property
    def tensor_count(self) -> int:
        return sum(g.count * len(g.tensors) for g in self.groups)

    @functools.cached_property
    def largest_module(self) -> int:
        """Elements of the largest single module (gathered whole by ZeRO-3)."""
        return max(sum(g.tensors) for g in self.groups)

    def persistent_numel(self, threshold: int) -> int:
        """Elements ZeRO-3 keeps gathered: tensors smaller than the persistence threshold."""
        return _gather_view(self, threshold)[0]

    def layer_gather(self, threshold: int) -> tuple[float, float]:
        """(non-persistent elements, modules needing a fetch) of one layer of the stack."""
        _, numel, fetches, _, _ = _gather_view(self, threshold)
        return numel / self.layers, fetches / self.layers

    def outer_gather(self, threshold: int) -> tuple[float, float]:
        """(non-persistent elements, modules needing a fetch) outside the stack (embeddings,
        heads), gathered once per pass without prefetch."""
        _, _, _, numel, fetches = _gather_view(self, threshold)
        return float(numel), float(fetches)


@functools.lru_cache(maxsize=4096)
def _gather_view(model: ModelSpec, threshold: int) -> tuple[int, int, int, int, int]:
    """(persistent elements, stack's gathered elements and fetches, the same outside it)."""
    persistent = stack = stack_fetches = outer = outer_fetches = 0
    for g in model.groups:
        persistent += g.count * sum(t for t in g.tensors if t < threshold)
        gathered = g.count * sum(t for t in g.tensors if t >= threshold)
        fetches = g.count if max(g.tensors) >= threshold else 0
        if g.in_stack:
            stack, stack_fetches = stack + gathered, stack_fetches + fetches
        else:
            outer, outer_fetches = outer + gathered, outer_fetches + fetches
    return persistent, stack, stack_fetches, outer, outer_fetches


def _choice(rng: Rng, values: tuple[Any, ...], weights: tuple[float, ...] | None = None) -> Any:
    p = None if weights is None else np.asarray(weights) / sum(weights)
    return values[int(rng.choice(len(values), p=p))]


def _transformer_layer(h: int) -> tuple[ModuleGroup, ...]:
    """One decoder/encoder layer: norm, qkv, attention output, norm, fc1, fc2 (weight, bias)."""
    sizes = ((h, h), (3 * h * h, 3 * h), (h * h, h), (h, h), (4 * h * h, 4 * h), (4 * h * h, h))
    return tuple(ModuleGroup(tensors, 1) for tensors in sizes)


@attrs.frozen
class TransformerShape:
    """A transformer's shape; ``head`` is the output width (vocabulary or classes)."""

    hidden: int
    layers: int
    heads: int
    seq: int
    head: int
    head_on_all_tokens: bool  # language models: logits for every token; classifiers: one
    tied_head: bool
    input_params: int  # token embedding or patch projection
    position_params: int
    flash: bool
    checkpointing: bool
    frozen_layers: int  # the bottom ones, with the inputs
    precision: str


def transformer(kind: str, shape: TransformerShape, rng: Rng) -> ModelSpec:
    """A decoder, encoder or vision transformer built from its shape."""
    h, layers, s = shape.hidden, shape.layers, shape.seq
    frozen, trainable_layers = shape.frozen_layers, shape.layers - shape.frozen_layers
    b = 2 if shape.precision == "bf16" else 4
    groups: list[ModuleGroup] = []
    for template in _transformer_layer(h):
        if frozen:
            groups.append(attrs.evolve(template, count=frozen, trainable=False))
        groups.append(attrs.evolve(template, count=trainable_layers))
    inputs = (shape.input_params,) + ((shape.position_params,) if shape.position_params else ())
    groups.append(ModuleGroup(inputs, 1, in_stack=False, trainable=not frozen))
    groups.append(ModuleGroup((h, h), 1, in_stack=False))  # final norm
    if not shape.tied_head:
        groups.append(ModuleGroup((h * shape.head,), 1, in_stack=False))
    head_rows = s if shape.head_on_all_tokens else 1
    attention = 0 if shape.flash else 5 * shape.heads * s / h
    layer_act = s * h * (34 + attention) * b / 2
    logits = head_rows * shape.head * (b + 4)  # the head's output and its fp32 upcast for the loss
    layer_fwd = 2 * s * 12 * h * h + 4 * s * s * h
    fwd = layers * layer_fwd + 2 * head_rows * h * shape.head
    trainable_fwd = trainable_layers * layer_fwd + 2 * head_rows * h * shape.head
    transient_layers = float(rng.uniform(0.8, 2.0))  # activation gradients of the layer in flight
    saved: float
    if shape.checkpointing:
        saved = trainable_layers * s * h * b + logits
        extra = (1 + transient_layers) * layer_act + logits
        bwd = 3 * trainable_fwd  # backward plus the recomputed forward
    else:
        saved = trainable_layers * layer_act + logits
        extra = transient_layers * layer_act + logits
        bwd = 2 * trainable_fwd
    saved += s * h * b  # the embedding output
    facts = {
        "hidden": h,
        "layers": layers,
        "heads": shape.heads,
        "seq": s,
        "head": shape.head,
        "flash_attention": shape.flash,
        "checkpointing": shape.checkpointing,
        "frozen_layers": frozen,
    }
    width_efficiency = min(1.0, 0.78 + 0.22 * h / 4096)
    return ModelSpec(
        kind=kind,
        groups=tuple(groups),
        layers=layers,
        trainable_layers=trainable_layers,
        fwd_flops=float(fwd),
        bwd_flops=float(bwd),
        tokens=s,
        width=h,
        saved_bytes=float(saved),
        backward_bytes=float(extra),
        traffic_bytes=float(4 * layers * layer_act + 3 * logits),
        gemm_efficiency=width_efficiency,
        precision=shape.precision,
        facts=facts,
    )


# (hidden, layers) of the GPT-3 family (Brown et al. 2020, table 2.1), 125M to 13B, and 20B.
_GPT_SHAPES: tuple[tuple[int, int], ...] = ((768, 12), (1024, 24), (1536, 24), (2048, 24))
_GPT_SHAPES += ((2560, 32), (4096, 32), (5120, 40), (6144, 44))
_VOCABS = (32_000, 50_257, 65_024, 128_256)


def draw_gpt(rng: Rng, frozen: bool = False) -> ModelSpec:
    """A GPT-style decoder (about 100M to 20B parameters); ``frozen``: its bottom part and
    embeddings frozen, as when tuning the top of a pretrained model."""
    h, base_layers = _choice(rng, _GPT_SHAPES)
    layers = max(4, int(round(base_layers * rng.uniform(0.75, 1.25))))
    seq = _choice(rng, (512, 1024, 2048, 4096), (0.15, 0.35, 0.35, 0.15))
    vocab = _choice(rng, _VOCABS, (0.3, 0.35, 0.1, 0.25))
    frozen_layers = int(round(layers * rng.uniform(0.3, 0.9))) if frozen else 0
    shape = TransformerShape(
        hidden=h,
        layers=layers,
        heads=h // _choice(rng, (64, 128)),
        seq=seq,
        head=vocab,
        head_on_all_tokens=True,
        tied_head=bool(rng.random() < 0.5),
        input_params=vocab * h,
        position_params=seq * h if rng.random() < 0.4 else 0,
        flash=bool(rng.random() < 0.6),
        checkpointing=bool(rng.random() < 0.08 + 0.1 * (h >= 4096)),
        frozen_layers=frozen_layers,
        precision="bf16" if rng.random() < 0.85 else "fp32",
    )
    return transformer("gpt-frozen" if frozen else "gpt", shape, rng)


def draw_encoder(rng: Rng) -> ModelSpec:
    """A BERT-style encoder with short sequences and a masked-LM head on every token."""
    h = _choice(rng, (768, 1024, 1536, 2048))
    vocab = _choice(rng, (30_522, 250_002), (0.7, 0.3))
    seq = _choice(rng, (128, 256, 512))
    shape = TransformerShape(
        hidden=h,
        layers=_choice(rng, (12, 24, 36)),
        heads=h // 64,
        seq=seq,
        head=vocab,
        head_on_all_tokens=True,
        tied_head=True,
        input_params=vocab * h,
        position_params=seq * h,
        flash=bool(rng.random() < 0.3),
        checkpointing=False,
        frozen_layers=0,
        precision="bf16" if rng.random() < 0.8 else "fp32",
    )
    return transformer("encoder", shape, rng)


def draw_vit(rng: Rng) -> ModelSpec:
    """A vision transformer on high-resolution images: many tokens, a small head."""
    patch = _choice(rng, (14, 16))
    resolution = _choice(rng, (224, 336, 448, 518))
    h = _choice(rng, (768, 1024, 1280, 1664))
    classes = _choice(rng, (1000, 21_843))
    shape = TransformerShape(
        hidden=h,
        layers=_choice(rng, (12, 24, 32, 48)),
        heads=h // 64,
        seq=(resolution // patch) ** 2 + 1,
        head=classes,
        head_on_all_tokens=False,
        tied_head=False,
        input_params=3 * patch * patch * h,
        position_params=((resolution // patch) ** 2 + 1) * h,
        flash=bool(rng.random() < 0.5),
        checkpointing=False,
        frozen_layers=0,
        precision="bf16" if rng.random() < 0.7 else "fp32",
    )
    return transformer("vit", shape, rng)


def draw_wide_mlp(rng: Rng) -> ModelSpec:
    """A deep stack of very wide MLP blocks over a few tokens per sample: many parameters,
    little compute and activation per sample, so communication and the optimizer dominate."""
    w = _choice(rng, (4096, 8192, 12_288, 16_384))
    depth = int(rng.integers(4, 17))
    tokens = _choice(rng, (16, 64, 256))
    classes = _choice(rng, (1000, 8192))
    b = 2 if rng.random() < 0.8 else 4
    groups = (
        ModuleGroup((w, w), depth),  # norm
        ModuleGroup((4 * w * w, 4 * w), depth),  # fc1
        ModuleGroup((4 * w * w, w), depth),  # fc2
        ModuleGroup((w * w, w), 1, in_stack=False),  # input projection
        ModuleGroup((w * classes, classes), 1, in_stack=False),  # head
    )
    # norm output, fc1 output, activation output (b bytes each), dropout mask (1 byte)
    per_block = tokens * w * (b + 4 * b + 4 * b + 1)
    fwd = 2 * tokens * (depth * 8 * w * w + w * w + w * classes)
    return ModelSpec(
        kind="wide-mlp",
        groups=groups,
        layers=depth,
        trainable_layers=depth,
        fwd_flops=float(fwd),
        bwd_flops=float(2 * fwd),
        tokens=tokens,
        width=w,
        saved_bytes=float(depth * per_block + tokens * w * b),
        backward_bytes=float(rng.uniform(0.8, 2.0) * per_block + tokens * classes * 8),
        traffic_bytes=float(4 * depth * per_block),
        gemm_efficiency=1.0,
        precision="bf16" if b == 2 else "fp32",
        facts={"width": w, "layers": depth, "tokens": tokens},
    )


def draw_convnet(rng: Rng) -> ModelSpec:
    """A U-Net-style convolutional network on large images: few parameters, large activations
    per sample, memory-bound element-wise work (normalisations, activations)."""
    resolution = _choice(rng, (256, 384, 512))
    base = _choice(rng, (64, 96, 128, 192))
    blocks = int(rng.integers(2, 5))
    b = 2 if rng.random() < 0.65 else 4
    groups: list[ModuleGroup] = []
    act = fwd = 0.0
    for level in range(4):
        channels, side = base * 2**level, resolution // 2 ** (level + 1)
        count = 2 * blocks  # encoder and decoder path
        groups.append(ModuleGroup((9 * channels * channels, channels), 2 * count))
        groups.append(ModuleGroup((channels, channels), 2 * count))  # normalisation
        pixels = side * side * channels
        act += 2 * count * pixels * (3 * b + 1)  # conv output, norm output, activation, mask
        fwd += 2 * count * 2 * 9 * channels * channels * side * side
    groups.append(ModuleGroup((3 * 9 * base, base), 1, in_stack=False))
    layers = 4 * 2 * blocks
    return ModelSpec(
        kind="convnet",
        groups=tuple(groups),
        layers=layers,
        trainable_layers=layers,
        fwd_flops=fwd,
        bwd_flops=2 * fwd,
        tokens=(resolution // 2) ** 2,
        width=2 * base,
        saved_bytes=act,
        backward_bytes=rng.uniform(0.15, 0.4) * act,  # gradients of the first, largest level
        traffic_bytes=5 * act,
        gemm_efficiency=float(rng.uniform(0.45, 0.7)),
        precision="bf16" if b == 2 else "fp32",
        facts={"resolution": resolution, "base_channels": base, "blocks_per_level": blocks},
    )


_KINDS: tuple[tuple[Callable[[Rng], ModelSpec], float], ...] = (
    (draw_gpt, 0.6),
    (lambda rng: draw_gpt(rng, frozen=True), 0.07),
    (draw_encoder, 0.09),
    (draw_vit, 0.08),
    (draw_wide_mlp, 0.08),
    (draw_convnet, 0.08),
)


def draw_model(rng: Rng) -> ModelSpec:
    """One model: about 2/3 GPT-style decoders, the rest encoders, ViTs, wide MLPs, U-Nets."""
    weights = np.asarray([w for _, w in _KINDS])
    draw, _ = _KINDS[int(rng.choice(len(_KINDS), p=weights / weights.sum()))]
    return draw(rng)
