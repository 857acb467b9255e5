"""Fingerprints that tie external-memory files to what made them.

- ``dictionary_checksum``: the symbols of a fairseq dictionary, in order (datastores and
  BM25 batch files made with another vocabulary are refused);
- ``stream_checksum``: a split's token stream (= a datastore's values), to recognise
  evaluation on the split the datastore was built from;
- ``model_fingerprint``: a model's parameters, to warn when a datastore's keys come from
  other weights.
"""

import hashlib

import numpy as np
import torch


def dictionary_checksum(dictionary) -> str:
    """A short fingerprint of a fairseq dictionary's symbols (in order), stored with
    datastores and BM25 batch files so that a file made with another vocabulary is refused."""
    digest = hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8"))
    return digest.hexdigest()[:16]


def stream_checksum(tokens: np.ndarray) -> str:
    """Fingerprint of a split's token stream (= a datastore's values), to recognise
    evaluation on the split the datastore was built from."""
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of a model's parameters (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
