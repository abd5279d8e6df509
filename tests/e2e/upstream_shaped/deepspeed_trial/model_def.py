"""A DeepSpeedTrial in the shape upstream dsat users wrote (our own code).

Upstream-shaped: attribute-style hyperparameters, the engine built from
``get_ds_config_from_hparams`` in ``__init__``, fp16/bf16 input casts decided by the
engine, ``context.to_device`` for batches, and DataLoaders with worker processes over a
ds_config that sets only ``train_batch_size``.
"""

from __future__ import annotations

from typing import Any

import attrdict
import deepspeed
import torch
from determined.pytorch import DataLoader
from determined.pytorch.deepspeed import DeepSpeedTrial, DeepSpeedTrialContext
from tiny_resnet import RandomImages, build_model
from torch import nn

from determined_dsat import get_ds_config_from_hparams


class TinyResNetTrial(DeepSpeedTrial):
    def __init__(self, context: DeepSpeedTrialContext) -> None:
        self.context = context
        self.hparams = attrdict.AttrDict(self.context.get_hparams())
        model = build_model(self.hparams.model_name)
        parameters = [p for p in model.parameters() if p.requires_grad]
        ds_config = get_ds_config_from_hparams(self.hparams)
        model_engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=parameters, config=ds_config
        )
        self.fp16 = model_engine.fp16_enabled()
        self.bf16 = model_engine.bfloat16_enabled()
        self.model_engine = self.context.wrap_model_engine(model_engine)
        self.criterion = nn.CrossEntropyLoss().to(self.context.device)

    def _cast(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.fp16:
            return inputs.half()
        return inputs.bfloat16() if self.bf16 else inputs

    def train_batch(self, iter_dataloader: Any, epoch_idx: int, batch_idx: int) -> dict[str, Any]:
        inputs, labels = self.context.to_device(next(iter_dataloader))
        loss = self.criterion(self.model_engine(self._cast(inputs)).float(), labels)
        self.model_engine.backward(loss)
        self.model_engine.step()
        return {"train_loss": loss.item()}

    def evaluate_batch(self, iter_dataloader: Any, batch_idx: int) -> dict[str, Any]:
        inputs, labels = self.context.to_device(next(iter_dataloader))
        loss = self.criterion(self.model_engine(self._cast(inputs)).float(), labels)
        return {"val_loss": loss.item()}

    def _loader(self, length: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            RandomImages(length=length),
            batch_size=self.context.train_micro_batch_size_per_gpu,
            shuffle=shuffle,
            num_workers=self.hparams.dataloader_workers,
        )

    def build_training_data_loader(self) -> DataLoader:
        return self._loader(10**6, shuffle=True)

    def build_validation_data_loader(self) -> DataLoader:
        per_step = self.context.train_micro_batch_size_per_gpu * self.context.distributed.size
        return self._loader(max(64, per_step), shuffle=False)
