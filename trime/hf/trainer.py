"""``TrimeTrainer``: ``transformers.Trainer`` trained with the TRIME loss.

    loss = TrimeLoss(model, memory="ext")
    trainer = TrimeTrainer(model=model, args=TrainingArguments(...), train_dataset=segments,
                           trime_loss=loss, train_batches=BM25Batches(segments, batch_size=8))
    trainer.train()

``compute_loss`` calls ``trime_loss`` with the model the Trainer hands it (the DDP-wrapped one
under several processes, so gradients are synchronised as usual) and the optimiser step
(the CE warm-up and the local-drop draw). ``train_batches`` (a batch sampler from
``trime.hf.data``) plans the training batches; without it the Trainer's own sampler and
``args.per_device_train_batch_size`` make random batches. Batches are collated by
``trime.hf.data.collate_segments`` unless a ``data_collator`` is given; the Trainer's removal of
unused columns is bypassed, as the loss reads doc_ids and segment_starts. Under several
processes, ``accelerate`` deals whole batches to the workers in turn.
"""

import time

import torch
import transformers

from trime.hf.data import collate_segments
from trime.hf.loss import TrimeLoss
from trime.progress import duration


class TrimeTrainer(transformers.Trainer):
    def __init__(self, *args, trime_loss: TrimeLoss, train_batches=None, **kwargs):
        kwargs.setdefault("data_collator", collate_segments)
        super().__init__(*args, **kwargs)
        self.trime_loss = trime_loss
        self.train_batches = train_batches
        self.loss_is_scaled_for_ga = False  # a mean over the batch's targets (see compute_loss)
        self._lm_losses = []  # training batches' vocabulary-only losses since the last log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The mean TRIME loss per target token of this batch."""
        output = self.trime_loss(**inputs, step=self.state.global_step, model=model)
        if model.training:
            self._lm_losses.append(float(output.lm_loss))
        return (output.loss, {"logits": output.logits}) if return_outputs else output.loss

    def log(self, logs, *args, **kwargs):
        """The Trainer's log, with lm_loss beside loss: the vocabulary-only NLL (nats per token)
        of the same training batches, as fairseq's trime_loss logs it."""
        if "loss" in logs and self._lm_losses:
            logs = dict(logs, lm_loss=round(sum(self._lm_losses) / len(self._lm_losses), 4))
            self._lm_losses = []
        return super().log(logs, *args, **kwargs)

    def _loader(self, dataset, batches=None, batch_size=None):
        planned = {"batch_sampler": batches} if batches is not None else {"batch_size": batch_size}
        loader = torch.utils.data.DataLoader(dataset, collate_fn=self.data_collator,
                                             num_workers=self.args.dataloader_num_workers, **planned)
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("TrimeTrainer: training requires a train_dataset")
        if self.train_batches is None:
            sampler = torch.utils.data.RandomSampler(
                self.train_dataset, generator=torch.Generator().manual_seed(self.args.seed))
            batches = torch.utils.data.BatchSampler(sampler, self._train_batch_size, drop_last=False)
            return self._loader(self.train_dataset, batches)
        return self._loader(self.train_dataset, self.train_batches)

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return self._loader(dataset, batch_size=self.args.eval_batch_size)


class ProgressLines(transformers.TrainerCallback):
    """One flushed line per Trainer log (every ``logging_steps``): the step out of ``max_steps``,
    the logged numbers, seconds per step and the time left. It reads the same on a terminal and
    in a log file, where the Trainer's own printer (``disable_tqdm=True``) sits in stdout's buffer
    until the run ends; pass it in place of ``transformers.PrinterCallback``."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.start = self.first_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = self.clock(), state.global_step  # resumed runs start later

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_local_process_zero or not logs:
            return
        done, total = state.global_step, state.max_steps
        numbers = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())
        line = f"step {done}/{total}: {numbers}"
        if self.start is not None and done > self.first_step:
            per_step = (self.clock() - self.start) / (done - self.first_step)
            line += f" ({per_step:.2f} s/step, {duration(per_step * max(total - done, 0))} left)"
        print(line, flush=True)
