"""trime.hf.TrimeLoss on tiny transformers models built from configs (no download): the loss and
the gradients of every parameter equal the naive Eq. 5 (tests/naive.py: explicit sums over the
vocabulary and memory) for GPT-2 and a LLaMA-style model, for each memory; g(c) is found in every
family of the architecture table."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from naive import long_memory, naive_loss_over_memory  # noqa: E402
from trime.hf import TrimeLoss  # noqa: E402
from trime.hf.architectures import ARCHITECTURES, LastFFNInput, ffn_input_dim  # noqa: E402

V, D, T = 23, 16, 7
IGNORE = -100
# the module whose input is g(c) in a 2-layer model, written out here (not read from the table)
TINY = {
    "gpt2": (dict(n_layer=2, n_embd=D, n_head=2, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0), "transformer.h.1.mlp"),
    "llama": (dict(num_hidden_layers=2, hidden_size=D, intermediate_size=32, num_attention_heads=2,
                   num_key_value_heads=1, max_position_embeddings=32), "model.layers.1.mlp"),
    "mistral": (dict(num_hidden_layers=2, hidden_size=D, intermediate_size=32, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=32, head_dim=8), "model.layers.1.mlp"),
    "qwen2": (dict(num_hidden_layers=2, hidden_size=D, intermediate_size=32, num_attention_heads=2,
                   num_key_value_heads=1, max_position_embeddings=32), "model.layers.1.mlp"),
    "gemma": (dict(num_hidden_layers=2, hidden_size=D, intermediate_size=32, num_attention_heads=2,
                   num_key_value_heads=1, max_position_embeddings=32, head_dim=8), "model.layers.1.mlp"),
    "phi3": (dict(num_hidden_layers=2, hidden_size=D, intermediate_size=32, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0), "model.layers.1.mlp"),
    "gpt_neox": (dict(num_hidden_layers=2, hidden_size=D, intermediate_size=32, num_attention_heads=2,
                      max_position_embeddings=32), "gpt_neox.layers.1.mlp"),
    "gpt_neo": (dict(num_layers=2, hidden_size=D, num_heads=2, max_position_embeddings=32,
                     attention_types=[[["global"], 2]]), "transformer.h.1.mlp"),
    "gptj": (dict(n_layer=2, n_embd=D, n_head=2, n_positions=32, rotary_dim=4), "transformer.h.1.mlp"),
    "opt": (dict(num_hidden_layers=2, hidden_size=D, ffn_dim=32, num_attention_heads=2,
                 max_position_embeddings=32, word_embed_proj_dim=D), "model.decoder.layers.1.fc1"),
}


def tiny_model(model_type, seed=0):
    torch.manual_seed(seed)
    kwargs, _ = TINY[model_type]
    config = transformers.AutoConfig.for_model(model_type, vocab_size=V, bos_token_id=1,
                                               eos_token_id=2, **kwargs)
    return transformers.AutoModelForCausalLM.from_config(config).double()


def naive_reference(model, model_type, input_ids, labels, memory, **options):
    """Σ over targets of -log P (Eq. 5), from a forward pass whose g(c) this test captures itself
    (``options``: naive_loss_over_memory's temperature, detach_keys)."""
    captured = {}
    module = model.get_submodule(TINY[model_type][1])
    handle = module.register_forward_pre_hook(lambda m, inputs: captured.update(g=inputs[0]))
    logits = model(input_ids=input_ids).logits
    handle.remove()
    g = captured["g"].reshape(*input_ids.shape, -1)[:, :-1]
    return naive_loss_over_memory(logits[:, :-1], g, labels[:, 1:], memory, IGNORE, **options)


def batch(seed=1, B=3):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, V, (B, T), generator=generator)
    labels = input_ids.clone()
    labels[0, -2:] = IGNORE  # ignored targets: neither scored nor memory
    return input_ids, labels


def memories(labels, rule, keep_local=True, docs=None):
    valid = (labels[:, 1:] != IGNORE).tolist()
    B, N = len(valid), len(valid[0])
    if rule == "local":
        return [[[(s, j) for j in range(t) if valid[s][j]] for t in range(N)] for s in range(B)]
    if rule == "long":
        order = [sum(1 for r in range(s) if docs[r] == docs[s]) for s in range(B)]
        return long_memory(docs, order, valid)
    return [[[(r, j) for r in range(B) for j in range(N) if valid[r][j] and (r != s or (keep_local and j < t))]
             for t in range(N)] for s in range(B)]


def parameter_grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
@pytest.mark.parametrize("memory, options, keep_local", [
    ("local", {}, True),
    ("long", {}, True),
    ("ext", {"local_drop_prob": 0.0}, True),
    ("ext", {"local_drop_prob": 1.0}, False),
    ("local", {"temperature": 2.0, "detach_memory": True}, True),
])
def test_loss_and_gradients_equal_naive(model_type, memory, options, keep_local):
    model = tiny_model(model_type)
    model.train()  # (no dropout in these configs: both passes compute the same function)
    input_ids, labels = batch()
    docs = [0, 0, 1]
    extra = dict(doc_ids=torch.tensor(docs), segment_starts=torch.tensor([0, T, 2 * T])) \
        if memory == "long" else {}
    loss = TrimeLoss(model, memory, kernel="chunked", **options)
    out = loss(input_ids, labels=labels, **extra)
    assert out.used_memory and out.num_tokens == int((labels[:, 1:] != IGNORE).sum())
    ours = parameter_grads(model, out.loss * out.num_tokens)
    loss.remove()
    naive = naive_reference(model, model_type, input_ids, labels,
                            memories(labels, memory, keep_local, docs),
                            temperature=options.get("temperature", 1.0),
                            detach_keys=options.get("detach_memory", False))
    assert torch.allclose(out.loss * out.num_tokens, naive, rtol=1e-6)
    reference = parameter_grads(model, naive)
    assert ours.keys() == reference.keys()
    for name in ours:
        scale = reference[name].abs().max()
        assert (ours[name] - reference[name]).abs().max() <= 1e-5 * scale + 1e-9, name  # fp32 memory sums


def test_none_and_warm_up_are_the_plain_lm_loss_of_transformers():
    """memory 'none', and training steps inside the CE warm-up, give transformers' own loss."""
    model = tiny_model("gpt2")
    input_ids, labels = batch(2)
    reference = model(input_ids=input_ids, labels=labels).loss
    out = TrimeLoss(model, "none")(input_ids, labels=labels)
    assert not out.used_memory and torch.allclose(out.loss, reference.to(out.loss.dtype), rtol=1e-6)
    model.train()
    warm = TrimeLoss(model, "local", ce_warmup_steps=3)
    early = warm(input_ids, labels=labels, step=2)
    late = warm(input_ids, labels=labels, step=3)
    assert not early.used_memory and torch.allclose(early.loss, early.lm_loss)
    assert late.used_memory and not torch.allclose(late.loss, late.lm_loss)


def test_attention_mask_ignores_padding():
    model = tiny_model("llama")
    input_ids, _ = batch(3)
    mask = torch.ones_like(input_ids)
    mask[1, -3:] = 0
    out = TrimeLoss(model, "local")(input_ids, attention_mask=mask)
    assert out.num_tokens == 3 * (T - 1) - 3


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_every_family_of_the_table_exposes_g(model_type):
    """The table finds the module this test names for each family, and g(c) has the model's width."""
    assert set(TINY) == set(ARCHITECTURES)
    model = tiny_model(model_type)
    loss = TrimeLoss(model, "local")
    assert loss.capture.name == TINY[model_type][1]
    input_ids, labels = batch(4)
    out = loss(input_ids, labels=labels)
    assert torch.isfinite(out.loss) and out.num_tokens > 0
    capture = LastFFNInput(model)
    model(input_ids)
    g = capture.pop(input_ids.shape)
    capture.remove()
    assert g.shape == (*input_ids.shape, ffn_input_dim(model)) and ffn_input_dim(model) == model.config.hidden_size


def test_unknown_architecture_names_the_class_and_the_fix():
    class Toy(torch.nn.Module):
        config = type("Config", (), {"model_type": "toy"})()

    with pytest.raises(ValueError, match=r"Toy \(model_type 'toy'\) is not in trime.hf's architecture table.*ffn_module="):
        TrimeLoss(Toy(), "local")
    model = tiny_model("gpt2")
    loss = TrimeLoss(model, "local", ffn_module="transformer.h.0.mlp")  # one's own choice
    assert loss.capture.name == "transformer.h.0.mlp"
    with pytest.raises(AttributeError):
        TrimeLoss(model, "local", ffn_module="transformer.h.9.mlp")


def test_long_memory_needs_document_layout():
    model = tiny_model("gpt2")
    input_ids, labels = batch()
    with pytest.raises(ValueError, match="doc_ids and segment_starts"):
        TrimeLoss(model, "long")(input_ids, labels=labels)
