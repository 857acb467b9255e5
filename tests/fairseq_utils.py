"""Build a tiny fairseq task / model / criterion from command-line words."""

import os

import torch

fairseq = __import__("pytest").importorskip("fairseq")
from fairseq import options, tasks  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

import trime  # noqa: E402

TINY_MODEL = [
    "--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "16",
    "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
    "--dropout", "0", "--attention-dropout", "0", "--tokens-per-sample", "12",
]
ADAPTIVE = [
    "--adaptive-softmax-cutoff", "10,20", "--adaptive-softmax-dropout", "0",
    "--decoder-input-dim", "16", "--decoder-output-dim", "16",
    "--adaptive-input", "--adaptive-input-cutoff", "10,20", "--tie-adaptive-weights",
    "--adaptive-input-factor", "2", "--adaptive-softmax-factor", "2",
]


def write_dictionary(data_dir, num_words=36):
    """dict.txt with ``num_words`` symbols w0..w{n-1} (ids start after the 4 specials)."""
    os.makedirs(data_dir, exist_ok=True)
    d = Dictionary()
    for i in range(num_words):
        d.add_symbol(f"w{i}", n=num_words - i)
    d.save(os.path.join(data_dir, "dict.txt"))
    return d


def build(data_dir, extra=(), criterion_args=("--criterion", "trime_loss"), model=TINY_MODEL):
    argv = [str(data_dir), "--user-dir", trime.USER_DIR, "--task", "trime_lm",
            *criterion_args, *model, *extra]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, model, criterion


def lm_sample(dictionary, rows, pad_last=0):
    """A language-modeling sample: target[t] = src[t+1]; the last row padded at the end."""
    pad = dictionary.pad()
    tokens = torch.tensor(rows)
    src, target = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    if pad_last:
        src[-1, -pad_last:] = pad
        target[-1, -pad_last:] = pad
    return {
        "net_input": {"src_tokens": src, "src_lengths": src.ne(pad).sum(1)},
        "target": target,
        "ntokens": int(target.ne(pad).sum()),
        "id": torch.arange(src.size(0)),
    }


TINY_TRANSLATION = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "2",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
    "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
    "--decoder-attention-heads", "2", "--dropout", "0", "--attention-dropout", "0",
    "--decoder-normalize-before",
]


def build_translation(data_dir, extra=(), criterion_args=("--criterion", "trime_mt_loss"),
                      task="trime_translation", num_words=30):
    """A tiny de->en translation task, model and criterion over dict.{de,en}.txt in data_dir."""
    for lang in ("de", "en"):
        if not os.path.exists(os.path.join(data_dir, f"dict.{lang}.txt")):
            write_dictionary(data_dir, num_words)
            os.replace(os.path.join(data_dir, "dict.txt"), os.path.join(data_dir, f"dict.{lang}.txt"))
    argv = [str(data_dir), "--user-dir", trime.USER_DIR, "--task", task, "-s", "de", "-t", "en",
            *criterion_args, *TINY_TRANSLATION, *extra]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def translation_sample(dictionary, sources, targets):
    """A translation sample: rows padded on the right (targets end in EOS; prev_output_tokens is
    EOS + target[:-1], fairseq's teacher forcing)."""
    pad, eos = dictionary.pad(), dictionary.eos()

    def padded(rows):
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

    src = padded([s + [eos] for s in sources])
    target = padded([t + [eos] for t in targets])
    prev = padded([[eos] + t for t in targets])
    return {
        "net_input": {"src_tokens": src, "src_lengths": src.ne(pad).sum(1),
                      "prev_output_tokens": prev},
        "target": target,
        "ntokens": int(target.ne(pad).sum()),
        "nsentences": len(targets),
        "id": torch.arange(len(targets)),
    }
