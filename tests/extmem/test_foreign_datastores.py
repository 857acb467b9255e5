"""trime-import-dstore: datastores written as knnlm, adaptive-knn-mt (the TRIME authors' MT fork)
and knn-box write them become trime datastores with the same keys and values; their FAISS
index is reused; what cannot be right is refused."""

import json
import os

import numpy as np
import pytest
import torch

from trime.extmem import foreign
from trime.extmem.datastore import Datastore
from trime.extmem.index import build_index, load_index, save_index
from trime.extmem.retrieval import Retriever

N, D, V = 300, 16, 50


def _keys_values(seed=0, vocab=V):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D)).astype(np.float32), rng.integers(4, vocab, N)


from foreign_format import write_knn_box, write_knn_mt, write_knnlm, write_knnlm_index  # noqa: E402


def lm_meta(size=V):
    return {"dictionary_size": size, "dictionary_checksum": "x" * 16}


# --- reading and importing ---

@pytest.mark.parametrize("fp16,keys_mode", [(True, "auto"), (True, "copy"), (False, "auto")],
                         ids=["fp16-link", "fp16-copy", "fp32-copy"])
def test_knnlm_datastore_imports_with_the_same_keys_and_values(tmp_path, fp16, keys_mode):
    keys, values = _keys_values()
    write_knnlm(str(tmp_path / "dstore"), keys, values, fp16)
    source = foreign.open_knnlm(str(tmp_path / "dstore"), N, D, fp16)
    path = foreign.import_datastore(source, str(tmp_path / "out"), lm_meta(), "last-ffn-input",
                                    keys_mode, chunk_rows=64, progress=False)
    datastore = Datastore.open(path)
    assert np.array_equal(datastore.values, values) and datastore.values.dtype == np.int32
    assert np.array_equal(datastore.keys, keys.astype(np.float16))
    linked = keys_mode == "auto" and fp16
    assert os.path.exists(os.path.join(path, "keys.npy")) == (not linked)
    imported = datastore.meta["imported"]
    assert imported["format"] == "knnlm" and imported["keys"] == ("read in place" if linked else "copied")
    assert imported["value_dtype"] == ("int16" if fp16 else "int64")
    assert datastore.meta["key_type"] == "last-ffn-input" and datastore.meta["dictionary_size"] == V
    # trime-build-index works on it as on any datastore (keys read in place when linked)
    index, info = build_index(datastore, "l2", "flat", progress=False)
    save_index(index, info, path)
    assert load_index(Datastore.open(path), "l2").ntotal == N


def test_knn_mt_and_knn_box_datastores_import_as_translation_datastores(tmp_path):
    keys, values = _keys_values(1)
    meta = dict(lm_meta(), kind="translation", source_lang="de", target_lang="en")
    write_knn_mt(str(tmp_path / "mt"), keys, values)
    write_knn_box(str(tmp_path / "box"), keys, values)
    for name, source in (("mt", foreign.open_knn_mt(str(tmp_path / "mt"), N, D, True)),
                         ("box", foreign.open_knn_box(str(tmp_path / "box")))):
        path = foreign.import_datastore(source, str(tmp_path / f"{name}-out"), meta, "final",
                                        progress=False)
        datastore = Datastore.open(path)
        assert np.array_equal(datastore.keys, keys.astype(np.float16))
        assert np.array_equal(datastore.values, values)
        assert datastore.meta["kind"] == "translation" and datastore.meta["key_type"] == "final"


def test_a_linked_key_file_that_moves_or_changes_is_refused(tmp_path):
    keys, values = _keys_values()
    write_knnlm(str(tmp_path / "dstore"), keys, values, True)
    path = foreign.import_datastore(foreign.open_knnlm(str(tmp_path / "dstore"), N, D, True),
                                    str(tmp_path / "out"), lm_meta(), "last-ffn-input",
                                    progress=False)
    os.rename(tmp_path / "dstore_keys.npy", tmp_path / "moved.npy")
    with pytest.raises(FileNotFoundError, match="--keys copy"):
        Datastore.open(path)
    with open(tmp_path / "dstore_keys.npy", "wb") as f:
        f.write(b"\0" * 100)
    with pytest.raises(ValueError, match="not the key file"):
        Datastore.open(path)


def test_their_index_is_reused_and_searches_as_it_did(tmp_path):
    import faiss

    keys, values = _keys_values(2)
    write_knnlm(str(tmp_path / "dstore"), keys, values, True)
    write_knnlm_index(tmp_path / "knn.index", keys.astype(np.float16))
    assert foreign.check_index(str(tmp_path / "knn.index"), N, D) == "l2"
    path = foreign.import_datastore(foreign.open_knnlm(str(tmp_path / "dstore"), N, D, True),
                                    str(tmp_path / "out"), lm_meta(), "last-ffn-input",
                                    progress=False)
    assert foreign.place_index(str(tmp_path / "knn.index"), path) == "l2"
    datastore = Datastore.open(path)
    theirs = faiss.read_index(str(tmp_path / "knn.index"))
    theirs.nprobe = 2
    queries = np.random.default_rng(3).standard_normal((7, D)).astype(np.float32)
    expected_distances, expected_rows = theirs.search(queries, 5)
    retrieved = Retriever(datastore, load_index(datastore, "l2", nprobe=2), 5, "l2").search(
        torch.from_numpy(queries))
    assert torch.equal(retrieved.labels, torch.from_numpy(values[expected_rows]).to(retrieved.labels.dtype))
    assert torch.allclose(retrieved.sims, -torch.from_numpy(expected_distances), atol=1e-5)


def test_an_index_over_other_keys_is_refused(tmp_path):
    keys, _ = _keys_values()
    write_knnlm_index(tmp_path / "knn.index", keys, added=200)  # a partial index
    with pytest.raises(ValueError, match="holds 200 keys"):
        foreign.check_index(str(tmp_path / "knn.index"), N, D)
    with pytest.raises(ValueError, match="dimension 16.*have 32"):
        foreign.check_index(str(tmp_path / "knn.index"), 200, 32)


# --- refusals ---

def test_int16_values_with_a_large_dictionary_are_refused(tmp_path):
    keys, values = _keys_values()
    write_knnlm(str(tmp_path / "dstore"), keys, values, True)
    source = foreign.open_knnlm(str(tmp_path / "dstore"), N, D, True)
    with pytest.raises(ValueError, match="int16 overflow"):
        foreign.import_datastore(source, str(tmp_path / "out"), lm_meta(267744), "last-ffn-input",
                                 progress=False)
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out.partial")


def test_values_outside_the_dictionary_are_refused(tmp_path):
    keys, values = _keys_values()
    values[123] = V + 5
    write_knnlm(str(tmp_path / "dstore"), keys, values, False)
    source = foreign.open_knnlm(str(tmp_path / "dstore"), N, D, False)
    with pytest.raises(ValueError, match=f"1 of {N} values.*row 123 holds {V + 5}"):
        foreign.import_datastore(source, str(tmp_path / "out"), lm_meta(), "last-ffn-input",
                                 chunk_rows=50, progress=False)
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out.partial")


def test_wrong_sizes_say_what_the_files_fit(tmp_path):
    keys, values = _keys_values()
    write_knnlm(str(tmp_path / "dstore"), keys, values, True)
    with pytest.raises(ValueError, match=f"--dstore-size {N} --dstore-fp16"):
        foreign.open_knnlm(str(tmp_path / "dstore"), N, D, False)  # forgot --dstore-fp16
    with pytest.raises(ValueError, match=f"--dstore-size {N} --dstore-fp16"):
        foreign.open_knnlm(str(tmp_path / "dstore"), N - 1, D, True)
    with pytest.raises(ValueError, match="check --dim"):
        foreign.open_knnlm(str(tmp_path / "dstore"), N, 24, True)


def test_non_finite_keys_are_refused(tmp_path):
    keys, values = _keys_values()
    keys[7, 3] = 1e6  # beyond fp16
    write_knnlm(str(tmp_path / "dstore"), keys, values, False)
    with pytest.raises(ValueError, match="not finite in fp16"):
        foreign.import_datastore(foreign.open_knnlm(str(tmp_path / "dstore"), N, D, False),
                                 str(tmp_path / "out"), lm_meta(), "last-ffn-input", progress=False)


# --- the console script ---

def _dictionary(path, words):
    with open(path, "w") as f:
        f.writelines(f"w{i} 1\n" for i in range(words))
    return str(path)


def test_console_script_imports_knnlm_with_its_index(tmp_path, capsys):
    pytest.importorskip("fairseq")
    from trime.cli.import_dstore import main

    keys, values = _keys_values()
    write_knnlm(str(tmp_path / "dstore"), keys, values, True)
    write_knnlm_index(tmp_path / "knn.index", keys.astype(np.float16))
    dictionary = _dictionary(tmp_path / "dict.txt", V - 4)  # + fairseq's 4 special symbols
    torch.save({"model": {f"decoder.layers.{i}.fc1.weight": torch.zeros(32, D) for i in range(2)}},
               tmp_path / "model.pt")
    main([str(tmp_path / "out"), "--dict", dictionary, "--dstore-filename", str(tmp_path / "dstore"),
          "--dstore-size", str(N), "--dim", str(D), "--dstore-fp16", "--index",
          str(tmp_path / "knn.index"), "--path", str(tmp_path / "model.pt"), "--no-progress-bar"])
    datastore = Datastore.open(str(tmp_path / "out"))
    assert datastore.meta["imported"]["format"] == "knnlm"
    assert os.path.isfile(tmp_path / "out" / "index.l2.faiss")
    assert json.load(open(tmp_path / "out" / "index.l2.json"))["index_type"] == "IndexIVFPQ"

    # refusals: model of another key dimension, a large dictionary with int16 values
    torch.save({"model": {"decoder.layers.0.fc1.weight": torch.zeros(32, 24)}}, tmp_path / "m24.pt")
    with pytest.raises(ValueError, match="dimension 16, the model .* dimension 24"):
        main([str(tmp_path / "out2"), "--dict", dictionary, "--dstore-filename",
              str(tmp_path / "dstore"), "--dstore-size", str(N), "--dim", str(D), "--dstore-fp16",
              "--path", str(tmp_path / "m24.pt")])
    big = _dictionary(tmp_path / "big.txt", 40000)
    with pytest.raises(ValueError, match="int16 overflow"):
        main([str(tmp_path / "out3"), "--dict", big, "--dstore-filename", str(tmp_path / "dstore"),
              "--dstore-size", str(N), "--dim", str(D), "--dstore-fp16"])
    assert not os.path.exists(tmp_path / "out2") and not os.path.exists(tmp_path / "out3")


def test_console_script_imports_knn_box_for_translation(tmp_path):
    pytest.importorskip("fairseq")
    from trime.cli.import_dstore import main

    keys, values = _keys_values()
    write_knn_box(str(tmp_path / "box"), keys, values)
    target, source = _dictionary(tmp_path / "dict.en.txt", V - 4), _dictionary(tmp_path / "dict.de.txt", 30)
    with pytest.raises(SystemExit):  # a translation datastore needs the direction
        main([str(tmp_path / "out"), "--dict", target, "--dstore-filename", str(tmp_path / "box")])
    main([str(tmp_path / "out"), "--dict", target, "--dstore-filename", str(tmp_path / "box"),
          "--source-dict", source, "-s", "de", "-t", "en", "--no-progress-bar"])
    meta = Datastore.open(str(tmp_path / "out")).meta
    assert (meta["kind"], meta["source_lang"], meta["target_lang"]) == ("translation", "de", "en")
    assert meta["imported"]["format"] == "knn-box" and meta["source_dictionary_size"] == 34
