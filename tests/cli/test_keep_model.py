"""trime-keep-model's kept(): the training state dropped, floating weights in fp16, tied weights
(one tensor under two names, as fairseq's --share-decoder-input-output-embed saves them) stored once."""

import io

import torch

from trime.cli.keep_model import kept


def test_tied_weights_stay_one_tensor_and_are_stored_once():
    embed = torch.randn(300, 16)
    untied = {"model": {"embed": embed, "output": embed.clone(), "steps": torch.tensor([3])},
              "last_optimizer_state": {"x": torch.zeros(5)}}
    tied = {"model": {"embed": embed, "output": embed, "steps": torch.tensor([3])},
            "last_optimizer_state": {"x": torch.zeros(5)}}
    for state in (untied, tied):
        out = kept(state)
        assert "last_optimizer_state" not in out
        assert out["model"]["embed"].dtype == torch.float16 and out["model"]["steps"].dtype == torch.int64
        assert torch.equal(out["model"]["output"], embed.half())
    assert len(_saved(kept(tied))) < 0.6 * len(_saved(kept(untied)))
    loaded = torch.load(io.BytesIO(_saved(kept(tied))), weights_only=False)
    assert loaded["model"]["output"].data_ptr() == loaded["model"]["embed"].data_ptr()


def _saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
