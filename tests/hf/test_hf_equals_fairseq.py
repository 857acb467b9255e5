"""trime.hf.TrimeLoss and fairseq's --criterion trime_loss, fed the same vocabulary scores and the
same g(c) (a tiny GPT-2's, handed to the criterion through a stub fairseq model whose output layer
is the identity), give the same loss and the same gradients for every memory rule."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("fairseq")

from fairseq_utils import build, write_dictionary  # noqa: E402
from test_hf_loss import TINY, tiny_model  # noqa: E402
from trime.hf import TrimeLoss  # noqa: E402

WORDS = 19  # fairseq's 4 specials + 19 words = the tiny model's vocabulary (23)


class StubFairseqModel(torch.nn.Module):
    """What trime_loss reads of a fairseq model: (features, {"trime_query": g}) whose decoder's
    output layer maps features to the vocabulary scores. Here the features are the HF model's
    logits over the full rows ``tokens`` (fairseq's src_tokens are rows[:, :-1]; transformers
    scores positions [:-1] of the full rows: the same positions, the same context)."""

    def __init__(self, hf_model, tokens):
        super().__init__()
        self.hf_model, self.tokens = hf_model, tokens
        self.decoder = torch.nn.Module()
        self.decoder.output_layer = torch.nn.Identity()
        self.decoder.adaptive_softmax = None

    def forward(self, src_tokens, src_lengths=None, features_only=True):
        assert torch.equal(src_tokens, self.tokens[:, :-1])
        captured = {}
        handle = self.hf_model.get_submodule(TINY["gpt2"][1]).register_forward_pre_hook(
            lambda m, inputs: captured.update(g=inputs[0]))
        logits = self.hf_model(input_ids=self.tokens).logits
        handle.remove()
        return logits[:, :-1], {"trime_query": captured["g"][:, :-1]}


@pytest.mark.parametrize("memory, extra", [("local", ()), ("long", ()),
                                           ("ext", ("--local-drop-prob", "0"))])
def test_same_scores_and_keys_give_the_same_loss_and_gradients(tmp_path, memory, extra):
    dictionary = write_dictionary(tmp_path, WORDS)
    assert len(dictionary) == 23
    _, _, criterion = build(tmp_path, ("--memory", memory, *extra))
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (3, 8), generator=generator)
    docs, starts = torch.tensor([0, 0, 1]), torch.tensor([0, 7, 14])  # consecutive segments
    layout = dict(doc_ids=docs, segment_starts=starts) if memory == "long" else {}

    hf = tiny_model("gpt2").float()  # fp32, as fairseq's vocabulary terms
    hf.train()
    out = TrimeLoss(hf, memory, kernel="chunked", **({"local_drop_prob": 0.0} if memory == "ext" else {}))(
        tokens, labels=tokens.clone(), **layout)
    ours = out.loss * out.num_tokens
    hf.zero_grad()
    ours.backward()
    hf_grads = {n: p.grad.clone() for n, p in hf.named_parameters() if p.grad is not None}

    stub = StubFairseqModel(hf, tokens)
    stub.train()
    src, target = tokens[:, :-1], tokens[:, 1:]
    sample = {"net_input": {"src_tokens": src}, "target": target, "ntokens": target.numel(),
              "id": torch.arange(3), "trime_doc": docs[:, None].expand_as(src).clone(),
              "trime_segment_start": starts}
    loss, sample_size, _ = criterion(stub, sample)
    assert sample_size == out.num_tokens
    assert torch.allclose(loss, ours, rtol=1e-5)
    hf.zero_grad()
    loss.backward()
    for name, grad in hf_grads.items():
        other = dict(hf.named_parameters())[name].grad
        assert (other - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-8, name

