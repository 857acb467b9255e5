"""The TRIME authors' IWSLT'14 checkpoints (their fairseq-0.10 MT fork) decode in
``fairseq-generate --task trime_translation``, without and with the datastore and FAISS index
shipped beside them (imported by trime-import-dstore).

Checkpoints are written in the fork's layout at a tiny size from what the fork's own parser and
model produce (tests/data/authors_mt_layout.json, scripts/authors_mt_layout.py): the loaded model
must give the fork's log-probabilities and datastore keys; their datastore is written as their
save_datastore.py writes it (raw fp16 keys, int64 values) with their IVFPQ index (ids = rows).
"""

import re

import numpy as np
import pytest
import torch

pytest.importorskip("fairseq")

from authors_format import MT_MODEL, authors_mt_data, write_mt_checkpoint  # noqa: E402
from console import USER_DIR, run  # noqa: E402
from foreign_format import write_knn_mt, write_knnlm_index  # noqa: E402

pytestmark = pytest.mark.e2e
RUNS = ("iwslt14-trime", "iwslt14-vanilla")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Both checkpoints, the data, and their datastore + indexes as shipped (DIR/keys.npy,
    DIR/vals.npy, DIR/knn_index_ip, DIR/knn_index_l2)."""
    root = tmp_path_factory.mktemp("authors_mt")
    data = authors_mt_data(root)
    checkpoints = {name: write_mt_checkpoint(root / f"{name}.pt", name, "data-bin/iwslt14.tokenized.de-en")
                   for name in RUNS}
    # the keys of their datastore: trime's own datastore of the same model (its keys are the
    # fork's, test below), rewritten in their layout
    run("trime-mt-datastore", data, "--path", checkpoints["iwslt14-trime"], "-s", "de", "-t", "en",
        "--subset", "train", "--mt-key", "final", "--save-dstore", root / "native", "--cpu")
    keys, values = np.load(root / "native" / "keys.npy"), np.load(root / "native" / "values.npy")
    theirs = root / "iwslt14-trime" / "dstore"
    write_knn_mt(str(theirs), keys, values, fp16=True)
    for metric in ("ip", "l2"):
        write_knnlm_index(theirs / f"knn_index_{metric}", keys, metric)
    return root, data, checkpoints, theirs, len(values)


def _generate(data, checkpoint, *extra):
    _, out = run("fairseq-generate", data, *USER_DIR, "--task", "trime_translation", "-s", "de",
                 "-t", "en", "--path", checkpoint, "--gen-subset", "test", "--beam", 4, "--lenpen",
                 0.6, "--max-len-a", 1.2, "--max-len-b", 10, "--batch-size", 2, "--cpu",
                 "--scoring", "sacrebleu", *extra)
    return out


def _hypotheses(output):
    return sorted(line for line in output.splitlines() if re.match(r"^[HP]-\d+\t", line))


@pytest.mark.parametrize("name", RUNS)
def test_their_checkpoint_is_their_function(released, name):
    """Loaded the way fairseq-generate loads it (--task trime_translation from the command line),
    the model gives the fork's log-probabilities and final features (their datastore keys)."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    _, data, checkpoints, _, _ = released
    parser = options.get_generation_parser()
    args = options.parse_args_and_arch(parser, [str(data), *USER_DIR, "--task", "trime_translation",
                                                "-s", "de", "-t", "en", "--path", str(checkpoints[name])])
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoints[name])], task=task)
    model = models[0].eval()
    source = torch.tensor([MT_MODEL["source"]])
    lengths = torch.tensor([len(MT_MODEL["source"])])
    previous = torch.tensor([MT_MODEL["prev_output_tokens"]])
    with torch.no_grad():
        log_probs = model.get_normalized_probs(model(source, lengths, previous), log_probs=True)[0]
        features, _ = model(source, lengths, previous, features_only=True)
    assert torch.allclose(log_probs, torch.tensor(MT_MODEL["log_probs"]), atol=2e-5)
    assert torch.allclose(features[0], torch.tensor(MT_MODEL["final_features"]), atol=2e-5)
    assert model.decoder.embed_tokens.weight is model.decoder.output_projection.weight  # tied again


@pytest.mark.parametrize("name", RUNS)
def test_their_checkpoint_decodes_without_a_datastore(released, name):
    _, data, checkpoints, _, _ = released
    out = _generate(data, checkpoints[name])
    assert len([line for line in _hypotheses(out) if line.startswith("H-")]) == 2 and "BLEU" in out


def test_their_shipped_datastore_and_indexes_decode_as_the_same_datastore_built_by_trime(released):
    """Their datastore imported with both indexes: kNN-MT (vanilla, l2) and TrimeMT (ip) with the
    settings of their README translate exactly as trime's own datastore of the same keys searched
    with the same index files."""
    import shutil

    root, data, checkpoints, theirs, size = released
    _, out = run("trime-import-dstore", root / "imported", "--dict", data / "dict.en.txt",
                 "--source-dict", data / "dict.de.txt", "-s", "de", "-t", "en", "--dstore-filename",
                 theirs, "--dstore-size", size, "--dim", 16, "--dstore-fp16", "--index",
                 theirs / "knn_index_ip", "--index", theirs / "knn_index_l2", "--path",
                 checkpoints["iwslt14-trime"])
    assert "--format" not in out and "evaluate with --knn-sim ip" in out and "--knn-sim l2" in out
    for metric in ("ip", "l2"):
        shutil.copyfile(theirs / f"knn_index_{metric}", root / "native" / f"index.{metric}.faiss")
    knn_mt = ["--eval-memory", "ext", "--eval-scoring", "knnlm", "--knn-sim", "l2", "--knn-k", 32,
              "--knn-lambda", 0.2, "--knn-temp", 100, "--knn-nprobe", 32]
    trime_mt = ["--eval-memory", "ext", "--eval-scoring", "trime", "--knn-sim", "ip", "--knn-k", 16,
                "--memory-temp", 15, "--knn-lambda", 0, "--knn-nprobe", 32]
    for name, memory in (("iwslt14-vanilla", knn_mt), ("iwslt14-trime", trime_mt)):
        imported = _hypotheses(_generate(data, checkpoints[name], *memory, "--dstore", root / "imported"))
        native = _hypotheses(_generate(data, checkpoints[name], *memory, "--dstore", root / "native"))
        assert imported == native and any(line.startswith("P-") for line in imported)
        plain = _hypotheses(_generate(data, checkpoints[name]))
        assert _scores(imported) != _scores(plain)  # the memory took part


def _scores(hypotheses):
    return [line.split("\t")[1] for line in hypotheses if line.startswith("H-")]


def test_trime_repro_authors_unpacks_a_translation_zip_imports_its_datastore_and_tables_bleu(released):
    """A zip laid out as theirs (NAME/checkpoint_best.pt, NAME/dstore/{keys,vals}.npy and
    knn_index_ip): the datastore is imported with the sizes its files give, TrimeMT decodes dev
    and test with their README's settings, and the table holds their published test BLEU."""
    import json
    import zipfile

    from trime.repro.authors import RELEASED_MT, generate_argv, score

    root, data, checkpoints, theirs, _ = released
    archive = root / "iwslt14-trime.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.write(checkpoints["iwslt14-trime"], "iwslt14-trime/checkpoint_best.pt")
        for name in ("keys.npy", "vals.npy", "knn_index_ip"):
            out.write(theirs / name, f"iwslt14-trime/dstore/{name}")
    common = ["authors", "iwslt14-trime", data, "--zip", archive, "--work", root / "repro",
              "--out", root / "repro-out", "--in-process"]
    _, out = run("trime-repro", *common)
    table = json.load(open(root / "repro-out" / "table.json"))
    assert list(table["rows"]) == ["TrimeMT"] and table["unit"] == "BLEU"
    row = table["rows"]["TrimeMT"]
    assert row["test"]["published"] == 33.73 and row["valid"]["published"] is None
    memory = RELEASED_MT["iwslt14-trime"].rows[0][2]
    unpacked = root / "repro" / "iwslt14-trime" / "iwslt14-trime" / "checkpoint_best.pt"
    _, log = run(*generate_argv(str(unpacked), str(data), "test", memory,
                                str(root / "repro" / "iwslt14-trime-dstore")))
    assert row["test"]["BLEU"] == score(log, "BLEU")
    assert "| TrimeMT |" in out and "| 33.73 |" in out
    _, out = run("trime-repro", *common)
    assert out.count("skipped") == 3  # datastore, dev, test
