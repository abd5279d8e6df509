"""The small GPT of model.py as a Determined ``DeepSpeedTrial``.

Determined's DeepSpeedTrial controller runs the training loop: it calls
``train_batch`` ``gradient_accumulation_steps`` times per batch (one "batch" of
the searcher's ``max_length`` is one optimizer step), validates, checkpoints with
DeepSpeed's ``save_checkpoint`` on every rank, and resumes from checkpoints.

Under DeepSpeed Autotune the search sets the ``_use_dsat_mode`` hyperparameter; the
controller then wraps the first batches in Determined's own autotuning reporting
context, so this file needs nothing autotuning-specific: DeepSpeed profiles, writes
its JSON results and exits, and the controller reports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import deepspeed
import torch
from determined import pytorch
from determined.pytorch import deepspeed as det_ds
from model import GPT, GPTConfig, RandomTokenDataset

from determined_dsat import get_ds_config_from_hparams

TRAIN_SEED, VALIDATION_SEED = 1, 2


class GPTTrial(det_ds.DeepSpeedTrial):
    def __init__(self, context: det_ds.DeepSpeedTrialContext) -> None:
        self.context = context
        self.hparams = context.get_hparams()
        # hyperparameters.deepspeed_config with the trial's overwrite_deepspeed_args merged in.
        ds_config = get_ds_config_from_hparams(self.hparams)
        self.config = GPTConfig.from_hparams(self.hparams)
        torch.manual_seed(int(self.hparams.get("seed", 0)))
        model = GPT(self.config)
        engine, _optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=ds_config
        )
        self.engine = context.wrap_model_engine(engine)

    def _loader(self, seed: int, samples: int, shuffle: bool) -> pytorch.DataLoader:
        dataset = RandomTokenDataset(self.config.vocab_size, self.config.seq_len, samples, seed)
        # Batches are per rank and per micro-step: Determined shards them over the ranks.
        return pytorch.DataLoader(
            dataset,
            batch_size=self.context.train_micro_batch_size_per_gpu,
            shuffle=shuffle,
            drop_last=True,
        )

    def build_training_data_loader(self) -> pytorch.DataLoader:
        samples = int(self.hparams.get("train_samples", 100_000))
        return self._loader(TRAIN_SEED, samples, shuffle=True)

    def build_validation_data_loader(self) -> pytorch.DataLoader:
        # At least one full batch per rank, whatever micro-batch the autotuner tries.
        per_step = self.context.train_micro_batch_size_per_gpu * self.context.distributed.size
        samples = max(int(self.hparams.get("validation_samples", 64)), per_step)
        return self._loader(VALIDATION_SEED, samples, shuffle=False)

    def train_batch(
        self, dataloader_iter: Iterator[Any] | None, epoch_idx: int, batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """One micro-batch: the controller calls this gradient_accumulation_steps times."""
        assert dataloader_iter is not None
        inputs, targets = self.context.to_device(next(dataloader_iter))
        loss = self.engine(inputs, targets)
        self.engine.backward(loss)
        self.engine.step()
        return {"loss": loss.detach()}

    def evaluate_batch(
        self, dataloader_iter: Iterator[Any] | None, batch_idx: int
    ) -> dict[str, torch.Tensor]:
        assert dataloader_iter is not None
        inputs, targets = self.context.to_device(next(dataloader_iter))
        return {"val_loss": self.engine(inputs, targets).float()}
