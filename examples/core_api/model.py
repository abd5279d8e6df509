"""A small GPT-style decoder-only transformer and a random-token dataset, in plain torch.

Nothing is downloaded: the data are random token ids drawn from a seeded generator,
so every run (and every rank) sees the same, reproducible samples. The training loss
of a model on uniform random tokens cannot drop below ``ln(vocab_size)``; the example
is about throughput and memory, not accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Model sizes, normally read from the experiment's hyperparameters."""

    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    seq_len: int = 64
    vocab_size: int = 512
    dropout: float = 0.0

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> GPTConfig:
        """Build a config from the hyperparameters that name a model size; others are ignored."""
        return cls(
            n_layer=int(hparams["n_layer"]),
            n_head=int(hparams["n_head"]),
            d_model=int(hparams["d_model"]),
            seq_len=int(hparams["seq_len"]),
            vocab_size=int(hparams["vocab_size"]),
            dropout=float(hparams.get("dropout", 0.0)),
        )


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.d_model % config.n_head != 0:
            raise ValueError(
                f"d_model ({config.d_model}) must be divisible by n_head ({config.n_head})"
            )
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        # (batch, seq, width) -> (batch, heads, seq, head_dim)
        q, k, v = (t.view(batch, seq, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.proj = nn.Linear(4 * config.d_model, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + position embeddings, ``n_layer`` blocks, a final LayerNorm, a tied LM head.

    ``forward(tokens, targets)`` returns the mean next-token cross-entropy loss, so a
    DeepSpeed engine wrapping it returns the loss directly.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Parameter count, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seq = tokens.size(1)
        if seq > self.config.seq_len:
            raise ValueError(
                f"sequence of {seq} tokens is longer than seq_len {self.config.seq_len}"
            )
        positions = torch.arange(seq, device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


class RandomTokenDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``length`` samples of ``seq_len + 1`` uniform random token ids, split into input/target.

    Sample ``i`` comes from a generator seeded with ``(seed, i)``, so it is the same on
    every rank, every run and after a restart, without holding the data in memory.
    """

    def __init__(self, vocab_size: int, seq_len: int, length: int, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        tokens = torch.randint(self.vocab_size, (self.seq_len + 1,), generator=generator)
        return tokens[:-1], tokens[1:]

    def batch(self, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at ``indices`` stacked into ``(inputs, targets)``, wrapping around."""
        samples = [self[i % self.length] for i in indices]
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
