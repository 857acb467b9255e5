"""Decoding with a datastore (kNN-MT, TrimeMT_ext): each step's full distribution vs the naive
word-by-word mixture over a brute-force search of the datastore, summing to 1; fairseq-generate
with λ = 0 gives exactly the hypotheses and scores of decoding without memory; bad input."""

import math
import re

import numpy as np
import pytest
import torch

from console import run
from naive import brute_force_knn, knnlm_distribution, trime_ext_distribution
from parallel_toy import trained_with_datastore

pytestmark = pytest.mark.e2e  # trains a toy model and runs fairseq's console scripts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return trained_with_datastore(tmp_path_factory.mktemp("mt_generate"))


def _generator(data, checkpoint, memory):
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import trime

    argv = [str(data), "--user-dir", trime.USER_DIR, "--task", "trime_translation", "-s", "de",
            "-t", "en", "--path", str(checkpoint), "--beam", "2", *memory]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_generation_parser(), argv))
    task = tasks.setup_task(cfg.task)
    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoint)], task=task)
    return task, models[0].eval(), task.build_generator(models, cfg.generation)


@pytest.mark.parametrize("scoring, sim", [("knnlm", "l2"), ("trime", "ip")])
def test_a_step_is_the_naive_mixture_over_the_retrieved_entries(built, scoring, sim):
    data, checkpoint, dstore = built
    lam, temp, tau, k = 0.3, 2.0, 0.5, 8
    task, model, generator = _generator(data, checkpoint, [
        "--eval-memory", "ext", "--dstore", str(dstore), "--eval-scoring", scoring, "--knn-sim", sim,
        "--knn-k", str(k), "--knn-lambda", str(lam), "--knn-temp", str(temp), "--memory-temp", str(tau)])
    task.load_dataset("valid")
    sample = task.dataset("valid").collater([task.dataset("valid")[i] for i in range(3)])
    ensemble = generator.model
    with torch.no_grad():
        encoder_outs = ensemble.forward_encoder(sample["net_input"])
        tokens = sample["net_input"]["prev_output_tokens"][:, :3]  # three steps of teacher forcing
        incremental_states = [{}]  # as SequenceGenerator keeps it: one step at a time
        for step in range(3):
            log_probs, _ = ensemble.forward_decoder(tokens[:, :step + 1], encoder_outs,
                                                    incremental_states)
        features = model.decoder(tokens, encoder_out=encoder_outs[0], features_only=True)[0][:, -1]
        logits = model.decoder.output_layer(features)
    keys = torch.from_numpy(np.load(dstore / "keys.npy").astype(np.float32))
    values = torch.from_numpy(np.load(dstore / "values.npy").astype(np.int64))
    sims, rows = brute_force_knn(features, keys, k, sim)
    if sim == "ip":
        sims = sims / math.sqrt(keys.shape[1])  # TRIME's similarity q·k/√d
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, dtype=log_probs.dtype), atol=1e-5)
    for i in range(3):
        if scoring == "knnlm":
            expected = knnlm_distribution(logits[i], sims[i], values[rows[i]], lam, temp)
        else:
            expected = trime_ext_distribution(logits[i], features[i], keys, values, [], sims[i],
                                              values[rows[i]], tau, lam, temp, interp_span=False)
        assert torch.allclose(log_probs[i].double().exp(), expected, atol=2e-5), i


def _hypotheses(output):
    return sorted(line for line in output.splitlines() if re.match(r"^[HP]-\d+\t", line))


def test_lambda_zero_decodes_exactly_as_without_memory(built):
    data, checkpoint, dstore = built
    common = [data, "--user-dir", __import__("trime").USER_DIR, "--task", "trime_translation",
              "-s", "de", "-t", "en", "--path", checkpoint, "--beam", "4", "--nbest", "2",
              "--batch-size", "5", "--gen-subset", "valid", "--cpu", "--scoring", "sacrebleu"]
    _, plain = run("fairseq-generate", *common)
    _, knn = run("fairseq-generate", *common, "--eval-memory", "ext", "--dstore", dstore,
                 "--eval-scoring", "knnlm", "--knn-lambda", "0", "--knn-k", "4")
    assert _hypotheses(plain) and _hypotheses(knn) == _hypotheses(plain)
    _, mixed = run("fairseq-generate", *common, "--eval-memory", "ext", "--dstore", dstore,
                   "--eval-scoring", "knnlm", "--knn-lambda", "0.5", "--knn-k", "4")
    assert "BLEU" in mixed and _hypotheses(mixed) != _hypotheses(plain)


def test_a_datastore_for_other_data_or_a_task_without_datastores_is_refused(built, tmp_path, capsys):
    import json
    import shutil

    data, checkpoint, dstore = built

    def refused(name, change, message):  # a copy of the datastore whose meta.json `change` edits
        altered = tmp_path / name
        shutil.copytree(dstore, altered)
        meta = json.loads((altered / "meta.json").read_text())
        change(meta)
        (altered / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=message):
            _generator(data, checkpoint, ["--eval-memory", "ext", "--dstore", str(altered),
                                          "--eval-scoring", "knnlm"])

    refused("reverse", lambda meta: meta.update(source_lang="en", target_lang="de"),
            "was built for en->de")
    refused("other-target", lambda meta: meta.update(dictionary_checksum="0" * 16), "another dictionary")
    # what an LM datastore (fairseq-eval-lm --save-dstore) records: no kind
    refused("lm-kind", lambda meta: meta.pop("kind"), "not a datastore of parallel data.*trime-mt-datastore")
    with pytest.raises(SystemExit):  # translation's --eval-memory offers none and ext only
        _generator(data, checkpoint, ["--eval-memory", "local"])
    assert "invalid choice: 'local' (choose from 'none', 'ext')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs --dstore"):
        _generator(data, checkpoint, ["--eval-memory", "ext", "--eval-scoring", "knnlm"])
    # fairseq's own translation task has no --dstore: fairseq's parser refuses the option
    code, output = run("fairseq-generate", data, "--user-dir", __import__("trime").USER_DIR,
                       "--task", "translation", "-s", "de", "-t", "en", "--path", checkpoint,
                       "--dstore", dstore, "--cpu", check=False)
    assert code != 0 and "unrecognized arguments: --dstore" in output, output[-2000:]


def _bleu(output):
    return float(re.search(r"BLEU = ([0-9.]+)", output).group(1))


def test_a_datastore_of_the_decoded_pairs_raises_bleu(built, tmp_path):
    """In-domain memory: with a datastore of the very pairs being translated (keys from their
    reference prefixes), kNN-MT can copy the references that the briefly trained model cannot
    produce; BLEU must rise."""
    data, checkpoint, _ = built
    dstore = tmp_path / "valid-dstore"
    run("trime-mt-datastore", data, "--path", checkpoint, "-s", "de", "-t", "en", "--subset", "valid",
        "--save-dstore", dstore, "--cpu")
    run("trime-build-index", dstore, "--metric", "l2", "--index-type", "flat")
    common = [data, "--user-dir", __import__("trime").USER_DIR, "--task", "trime_translation",
              "-s", "de", "-t", "en", "--path", checkpoint, "--beam", "4", "--batch-size", "8",
              "--gen-subset", "valid", "--cpu", "--scoring", "sacrebleu"]
    _, plain = run("fairseq-generate", *common)
    _, knn = run("fairseq-generate", *common, "--eval-memory", "ext", "--dstore", dstore,
                 "--eval-scoring", "knnlm", "--knn-sim", "l2", "--knn-k", "4", "--knn-lambda", "0.8",
                 "--knn-temp", "1")
    assert _bleu(knn) > _bleu(plain) + 10, (_bleu(plain), _bleu(knn))


def test_fairseq_interactive_translates_with_the_datastore(built):
    import subprocess

    from console import console_script

    data, checkpoint, dstore = built
    sources = "".join(line for line in open(data.parent / "valid.de"))
    proc = subprocess.run(
        [console_script("fairseq-interactive"), str(data), "--user-dir", __import__("trime").USER_DIR,
         "--task", "trime_translation", "-s", "de", "-t", "en", "--path", str(checkpoint),
         "--beam", "4", "--cpu", "--eval-memory", "ext", "--dstore", str(dstore),
         "--eval-scoring", "knnlm", "--knn-k", "4", "--knn-lambda", "0.5"],
        input=sources, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hypotheses = [line for line in proc.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == len(sources.splitlines())


def test_fairseq_generate_translates_every_pair_whatever_the_batch_size(built):
    """fairseq 0.12 drops a last batch whose size is not a multiple of
    --required-batch-size-multiple (8; fairseq#5036): 16 pairs at --batch-size 5 would lose one."""
    data, checkpoint, _ = built
    _, output = run("fairseq-generate", data, "--user-dir", __import__("trime").USER_DIR, "--task",
                    "trime_translation", "-s", "de", "-t", "en", "--path", checkpoint, "--beam", "2",
                    "--batch-size", "5", "--gen-subset", "valid", "--cpu")
    assert len([line for line in output.splitlines() if line.startswith("H-")]) == 16
    _, output = run("fairseq-generate", data, "--task", "translation", "-s", "de", "-t", "en",
                    "--path", checkpoint, "--beam", "2", "--batch-size", "5", "--gen-subset", "valid",
                    "--cpu", "--user-dir", __import__("trime").USER_DIR)
    assert len([line for line in output.splitlines() if line.startswith("H-")]) == 15  # fairseq's own
