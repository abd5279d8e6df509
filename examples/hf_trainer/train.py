"""Train a tiny GPT-2 with the Hugging Face ``Trainer`` and DeepSpeed, as a Determined trial.

The script follows the shape Determined documented for DeepSpeed Autotune with HF:

* the trial's hyperparameters carry ``overwrite_deepspeed_args``;
  ``get_hf_args_with_overwrites`` merges them into the ds_config file named by
  ``--deepspeed`` and makes ``--per_device_train_batch_size`` and
  ``--gradient_accumulation_steps`` agree with it, before HF parses the arguments;
* Determined's ``DetCallback`` reports HF's logs and evaluations to the searcher;
* ``dsat_reporting_context`` wraps ``trainer.train()``. In an autotuning trial DeepSpeed
  profiles a few steps, writes its measurements and calls ``exit()``; the context
  reports them to the search. Without an ``autotuning`` section it does nothing.

The model is built from a ``GPT2Config`` (nothing is downloaded) and trained on random
token ids, so its loss stays near ``ln(vocab_size)``: the example measures speed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

# No network on the trial machines: never look anything up on the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import determined as det  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from determined.transformers import DetCallback  # noqa: E402

from determined_dsat.integration.hparams import get_hf_args_with_overwrites  # noqa: E402
from determined_dsat.integration.reporting import dsat_reporting_context  # noqa: E402

TRAIN_SEED, EVAL_SEED = 1, 2


@dataclasses.dataclass
class ModelArguments:
    """The GPT-2 shape and the size of the random data sets (command-line flags)."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    seq_len: int = 64
    vocab_size: int = 512
    train_samples: int = 100_000
    eval_samples: int = 64


class RandomTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """``length`` sequences of uniform random token ids; sample ``i`` is seeded by ``i``,
    so every rank and every run sees the same data without holding it in memory."""

    def __init__(self, vocab_size: int, seq_len: int, length: int, seed: int) -> None:
        self.vocab_size, self.seq_len, self.length, self.seed = vocab_size, seq_len, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        tokens = torch.randint(self.vocab_size, (self.seq_len,), generator=generator)
        # GPT2LMHeadModel shifts the labels itself.
        return {"input_ids": tokens, "labels": tokens.clone()}


def build_model(args: ModelArguments) -> transformers.GPT2LMHeadModel:
    config = transformers.GPT2Config(
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        n_positions=args.seq_len,
        vocab_size=args.vocab_size,
    )
    return transformers.GPT2LMHeadModel(config)


def main(
    core_context: det.core.Context,
    model_args: ModelArguments,
    training_args: transformers.TrainingArguments,
) -> None:
    model = build_model(model_args)
    logging.info(
        "GPT-2: %.2fM parameters; micro-batch %d x %d accumulation; world size %d",
        model.num_parameters() / 1e6,
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
        training_args.world_size,
    )
    sizes = (model_args.vocab_size, model_args.seq_len)
    trainer = transformers.Trainer(
        model=model,
        args=training_args,
        train_dataset=RandomTokens(*sizes, model_args.train_samples, TRAIN_SEED),
        eval_dataset=RandomTokens(*sizes, model_args.eval_samples, EVAL_SEED),
    )
    det_callback = DetCallback(core_context, training_args)
    trainer.add_callback(det_callback)
    # An autotuning trial ends inside here; a normal run trains to --max_steps.
    with dsat_reporting_context(core_context, op=det_callback.current_op):
        trainer.train()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    if info is None or info.trial is None:
        raise SystemExit(
            "train.py runs as a Determined trial: start it with `det experiment create "
            "deepspeed.yaml .` or `python3 -m determined_dsat binary deepspeed.yaml .`"
        )
    args = get_hf_args_with_overwrites(sys.argv[1:], info.trial.hparams)
    parser = transformers.HfArgumentParser((ModelArguments, transformers.TrainingArguments))
    model_args, training_args = parser.parse_args_into_dataclasses(args)
    distributed = det.core.DistributedContext.from_deepspeed()
    with det.core.init(distributed=distributed) as core_context:
        main(core_context, model_args, training_args)
