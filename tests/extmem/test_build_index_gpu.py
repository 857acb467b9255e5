"""trime-build-index's defaults on a machine with faiss-gpu (simulated: this machine has none).

The fake GPU FAISS behaves like the real one where it matters here: it reports a GPU,
copies an index to the "device" and back, and refuses the 4-bit fast-scan IVFPQ that
only the CPU build has.
"""

import json
import os

import faiss
import numpy as np
import pytest
import torch

from trime.cli.build_index import main
from trime.extmem.datastore import DatastoreWriter

D = 16


@pytest.fixture
def datastore(tmp_path):
    keys = torch.randn(2048, D, generator=torch.Generator().manual_seed(3))
    writer = DatastoreWriter(str(tmp_path / "dstore"), len(keys), D,
                             {"dictionary_size": 9, "dictionary_checksum": "x"}, progress=False)
    writer.add(torch.arange(len(keys)), keys, torch.randint(4, 9, (len(keys),)))
    return str(tmp_path / "dstore")


@pytest.fixture
def fake_gpu_faiss(monkeypatch):
    moved = []

    def to_gpu(resources, device, index):
        if isinstance(index, faiss.IndexIVFPQFastScan):  # as faiss-gpu: no 4-bit fast scan
            raise RuntimeError("GPU IVFPQ does not support IndexIVFPQFastScan")
        moved.append(type(index).__name__)
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: index, raising=False)
    return moved


def _info(datastore, metric="ip"):
    with open(os.path.join(datastore, f"index.{metric}.json")) as f:
        return json.load(f)


def test_default_command_builds_on_the_gpu_with_8_bit_codes(datastore, fake_gpu_faiss):
    main([datastore, "--index-type", "ivfpq", "--nlist", "16"])  # --device auto, default bits
    info = _info(datastore)
    assert info["built_on"] == "gpu" and info["pq_bits"] == 8
    assert fake_gpu_faiss == ["IndexIVFPQ"]
    index = faiss.read_index(os.path.join(datastore, "index.ip.faiss"))
    assert index.ntotal == 2048


def test_default_command_on_cpu_keeps_4_bit_fast_scan(datastore):
    main([datastore, "--index-type", "ivfpq", "--nlist", "16", "--device", "cpu"])
    info = _info(datastore)
    assert info["built_on"] == "cpu" and info["pq_bits"] == 4


def test_4_bit_codes_on_the_gpu_are_refused_with_the_fix(datastore, fake_gpu_faiss, capsys):
    with pytest.raises(SystemExit):
        main([datastore, "--index-type", "ivfpq", "--nlist", "16", "--pq-bits", "4"])
    assert "--device cpu" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(datastore, "index.ip.faiss"))
    assert not fake_gpu_faiss
    assert np.load(os.path.join(datastore, "keys.npy")).shape == (2048, D)
