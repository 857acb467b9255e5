"""Where g(c), TRIME's key and query (paper §3: the input of the last layer's feed-forward
block), is in a ``transformers`` causal LM, one row per architecture family.

A row is ``model_type: (the layers' list, the FFN module inside a layer)``; a forward pre-hook on
the last layer's FFN module captures its input, i.e. after the layer's norm in pre-norm models
(as ``trime.glue.query`` does for fairseq decoders). Gated MLPs (LLaMA, Mistral, Qwen2, Gemma,
Phi-3) take the same input in their gate and up projections; OPT's FFN is ``fc1`` itself, which
receives the tokens flattened to [B·T, d]. A model not in the table: name the module yourself
(``TrimeLoss(model, ffn_module="model.layers.11.mlp")``).
"""

import torch

ARCHITECTURES = {
    "gpt2": ("transformer.h", "mlp"),
    "gpt_neo": ("transformer.h", "mlp"),
    "gptj": ("transformer.h", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "mlp"),
    "opt": ("model.decoder.layers", "fc1"),
    "llama": ("model.layers", "mlp"),
    "mistral": ("model.layers", "mlp"),
    "qwen2": ("model.layers", "mlp"),
    "gemma": ("model.layers", "mlp"),
    "phi3": ("model.layers", "mlp"),
}


def last_ffn_name(model, ffn_module: str = None) -> str:
    """The dotted name of the module whose input is g(c): ``ffn_module`` if given, else the last
    layer's FFN from ``ARCHITECTURES``; a clear error naming the model class otherwise."""
    if ffn_module is not None:
        model.get_submodule(ffn_module)  # raises AttributeError naming what is missing
        return ffn_module
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{type(model).__name__} (model_type {model_type!r}) is not in trime.hf's architecture "
            f"table ({', '.join(sorted(ARCHITECTURES))}): pass ffn_module=, the dotted name of its "
            "last layer's feed-forward block, whose input is g(c) (e.g. 'model.layers.11.mlp')")
    layers_name, ffn = ARCHITECTURES[model_type]
    layers = model.get_submodule(layers_name)
    return f"{layers_name}.{len(layers) - 1}.{ffn}"


def ffn_input_dim(model, ffn_module: str = None) -> int:
    """d, the width of g(c): the input features of the module ``last_ffn_name`` names."""
    module = model.get_submodule(last_ffn_name(model, ffn_module))
    for name in ("in_features", "nx"):  # nn.Linear; GPT-2's Conv1D
        if hasattr(module, name):
            return int(getattr(module, name))
    return int(model.config.hidden_size)  # an FFN block: its input is the hidden state


class LastFFNInput:
    """Captures g(c) [B, T, d] on every forward pass of ``model`` (a forward pre-hook on the module
    ``last_ffn_name`` names); ``remove()`` takes the hook off."""

    def __init__(self, model, ffn_module: str = None):
        self.name = last_ffn_name(model, ffn_module)
        self.captured = None
        self.handle = model.get_submodule(self.name).register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        self.captured = inputs[0]

    def pop(self, batch_shape) -> torch.Tensor:
        """The last pass's g(c) as [B, T, d] (``batch_shape`` = (B, T))."""
        captured, self.captured = self.captured, None
        if captured is None:
            raise RuntimeError(f"{self.name} did not run in this forward pass, so g(c) is missing "
                               "(is the hook on a module of this model?)")
        return captured.reshape(*batch_shape, captured.shape[-1])

    def remove(self):
        self.handle.remove()
