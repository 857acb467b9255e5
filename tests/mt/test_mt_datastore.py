"""trime-mt-datastore: one teacher-forced pass saves every target token of a split with its
decoder key; checked against the model's own features, pair by pair, and the target text."""

import json

import numpy as np
import pytest
import torch

from console import run
from parallel_toy import binarised, train

pytestmark = pytest.mark.e2e  # trains a toy model with fairseq-train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_dstore")
    data = binarised(root)
    train(data, root / "vanilla", ["--criterion", "label_smoothed_cross_entropy",
                                   "--label-smoothing", "0.1"])
    train(data, root / "trime", ["--criterion", "trime_mt_loss", "--mt-key", "last-ffn-input"])
    return root, data


def _pairs(data, checkpoint):
    """The valid pairs, each as its own one-pair batch, and the loaded model."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import trime

    argv = [str(data), "--user-dir", trime.USER_DIR, "--task", "trime_translation", "-s", "de",
            "-t", "en", "--path", str(checkpoint)]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_generation_parser(), argv))
    task = tasks.setup_task(cfg.task)
    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoint)], task=task)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    return models[0].eval(), [dataset.collater([dataset[i]]) for i in range(len(dataset))]


@pytest.mark.parametrize("model, key", [("vanilla", "final"), ("trime", "last-ffn-input")])
def test_every_target_token_with_its_key(trained, tmp_path, model, key):
    root, data = trained
    checkpoint = root / model / "checkpoint_last.pt"
    dstore = tmp_path / "dstore"
    run("trime-mt-datastore", data, "--path", checkpoint, "-s", "de", "-t", "en", "--subset",
        "valid", "--save-dstore", dstore, "--max-tokens", "64", "--cpu")
    meta = json.loads((dstore / "meta.json").read_text())
    # the trime model's key comes from its checkpoint (trained with --mt-key last-ffn-input)
    assert meta["key_type"] == key and meta["kind"] == "translation"
    assert (meta["source_lang"], meta["target_lang"], meta["split"]) == ("de", "en", "valid")
    keys, values = np.load(dstore / "keys.npy"), np.load(dstore / "values.npy")
    net, pairs = _pairs(data, checkpoint)
    expected_keys, expected_values = [], []
    with torch.no_grad():
        for sample in pairs:  # pair i's tokens are rows offset[i] .. offset[i] + len - 1
            captured = {}
            handle = net.decoder.layers[-1].fc1.register_forward_pre_hook(
                lambda m, inp: captured.update(g=inp[0]))
            features = net(**sample["net_input"], features_only=True)[0]
            handle.remove()
            rep = features if key == "final" else captured["g"].transpose(0, 1)
            expected_keys.append(rep[0].numpy())
            expected_values.append(sample["target"][0].numpy())
    expected_values = np.concatenate(expected_values)
    assert meta["num_tokens"] == len(expected_values) == len(values)
    assert (values == expected_values).all()
    assert values[-1] == 2  # every target ends with </s>, which is a datastore entry too
    np.testing.assert_allclose(keys.astype(np.float32), np.concatenate(expected_keys), atol=2e-3, rtol=2e-3)


def test_an_existing_folder_is_refused(trained, tmp_path):
    root, data = trained
    (tmp_path / "taken").mkdir()
    code, output = run("trime-mt-datastore", data, "--path", root / "vanilla" / "checkpoint_last.pt",
                       "-s", "de", "-t", "en", "--save-dstore", tmp_path / "taken", check=False)
    assert code != 0 and "already exists" in output


def test_skipped_pairs_leave_an_incomplete_datastore_that_says_so(trained, tmp_path):
    from trime.mt.datastore import save_translation_datastore

    root, data = trained
    net, pairs = _pairs(data, root / "vanilla" / "checkpoint_last.pt")
    from fairseq.data import Dictionary

    de, en = (Dictionary.load(str(data / f"dict.{lang}.txt")) for lang in ("de", "en"))
    sizes = [int(sample["target"].ne(en.pad()).sum()) for sample in pairs]
    with pytest.raises(ValueError, match=r"incomplete: \d+ of \d+ target tokens were written"):
        save_translation_datastore(str(tmp_path / "d"), net, pairs[:-1], sizes, "final", de, en, {})
    assert (tmp_path / "d.partial").exists() and not (tmp_path / "d").exists()


def test_two_shards_one_interrupted_merge_into_the_whole_datastore(trained, tmp_path):
    """--num-shards 2: shard 1 is cut after two pairs (what a killed run leaves), run again it
    continues, and trime-merge-dstore gives the datastore of one pass, row for row."""
    from trime.extmem.datastore import Datastore
    from trime.mt.datastore import pair_shard, save_translation_datastore

    root, data = trained
    checkpoint = root / "vanilla" / "checkpoint_last.pt"
    common = [data, "--path", checkpoint, "-s", "de", "-t", "en", "--subset", "valid",
              "--max-tokens", "64", "--cpu"]
    run("trime-mt-datastore", *common, "--save-dstore", tmp_path / "whole")
    run("trime-mt-datastore", *common, "--save-dstore", tmp_path / "ds.0", "--num-shards", 2,
        "--shard-id", 0)
    net, pairs = _pairs(data, checkpoint)
    task_dictionaries = _dictionaries(data)
    sizes = np.array([len(p["target"][0]) for p in pairs])
    shard = pair_shard(sizes, 2, 1)
    with pytest.raises(ValueError, match="incomplete"):  # killed after two pairs
        save_translation_datastore(str(tmp_path / "ds.1"), net, pairs[shard["item_start"]:][:2], sizes,
                                   "final", *task_dictionaries, {"split": "valid"}, shard)
    assert (tmp_path / "ds.1.partial").is_dir()
    _, out = run("trime-mt-datastore", *common, "--save-dstore", tmp_path / "ds.1", "--num-shards", 2,
                 "--shard-id", 1)
    saved = sizes[shard["item_start"]:][:2].sum()
    assert "resuming the datastore" in out and f"{saved} of {shard['row_end'] - shard['row_start']} rows" in out
    run("trime-merge-dstore", tmp_path / "merged", tmp_path / "ds.0", tmp_path / "ds.1")
    merged, whole = (Datastore.open(str(tmp_path / n)) for n in ("merged", "whole"))
    assert np.array_equal(merged.values, whole.values)
    # other batches, other padding: the same keys up to the fp16 rounding of the datastore
    np.testing.assert_allclose(merged.keys.astype(np.float32), whole.keys.astype(np.float32),
                               atol=2e-3, rtol=2e-3)
    assert merged.meta["kind"] == "translation" and merged.meta["source_lang"] == "de"


def _dictionaries(data):
    from fairseq.data import Dictionary

    return Dictionary.load(str(data / "dict.de.txt")), Dictionary.load(str(data / "dict.en.txt"))
