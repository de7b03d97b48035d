"""Tiny random models built with ``transformers``, saved in data/ for the assignments that load real checkpoints.

Three assignments load Hugging Face checkpoints into the student's own model: GPT-2 (chapter 5), Llama 3.2
(ch05_llama) and Qwen3 (ch05_qwen3). Their graders and notebooks need no ``transformers`` and download nothing:
they read a tiny random model of the same architecture, written once by this module, from data/:

    data/tiny-<name>.safetensors          the weights, with the key names of the published checkpoints
                                          (e.g. ``h.0.attn.c_attn.weight`` for openai-community/gpt2,
                                          ``model.layers.0.self_attn.q_proj.weight`` for Llama 3.2); the
                                          transformers configuration is in the file's metadata ("config")
    data/tiny-<name>-logits.safetensors   ``input_ids`` (2, 12) and the ``logits`` transformers computes
                                          for them (2, 12, vocab)

tests/test_transformers_fixtures.py proves the files are what ``transformers`` says: it rebuilds each model
from the metadata, loads the weights and recomputes the logits. Every weight is random, norms and biases
included (transformers initialises those to ones and zeros, which would hide a dropped bias or norm weight).

Regenerate (a maintainer, with the dev extra installed; nothing is downloaded):

    python -m tests.transformers_fixtures [NAME ...]
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
SEQUENCES, TOKENS = 2, 12  # the logits file's input: two sequences of twelve tokens

# name -> (transformers' model class, its config class, the config, the prefix the published checkpoint lacks)
SPECS = {
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        # GPT-2 small's conventions (tanh GELU, eps 1e-5, biases everywhere, head tied to wte), tiny sizes
        dict(vocab_size=96, n_positions=16, n_embd=24, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "transformer.",  # openai-community/gpt2's model.safetensors names the blocks "h.0.…", not "transformer.h.0.…"
    ),
    "llama32": (
        "LlamaForCausalLM",
        "LlamaConfig",
        # Llama 3.2's conventions (RoPE base 500,000 with its llama3 frequency scaling, GQA, SiLU gate, RMSNorm
        # eps 1e-5, no biases, tied embeddings), tiny sizes; head_dim 8 puts its four frequencies in all three
        # bands of the scaling (kept, smoothed, divided by the factor)
        dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
             tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192}),
        "",
    ),
    "qwen3": (
        "Qwen3ForCausalLM",
        "Qwen3Config",
        # Qwen3 0.6B's conventions (QK-norm, RoPE base 1,000,000, GQA, RMSNorm eps 1e-6, tied embeddings), tiny
        dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=40960, rms_norm_eps=1e-6,
             tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "",
    ),
}


def weights_path(name: str) -> pathlib.Path:
    return DATA / f"tiny-{name}.safetensors"


def logits_path(name: str) -> pathlib.Path:
    return DATA / f"tiny-{name}-logits.safetensors"


def _transformers():
    import transformers  # the dev extra; only the maintainers' tools and tests need it

    transformers.logging.set_verbosity_error()
    return transformers


def build(name: str, config: dict | None = None):
    """transformers' model for NAME (eager attention, eval mode), with the given or the built-in config."""
    transformers = _transformers()
    model_class, config_class, tiny, _ = SPECS[name]
    cfg = getattr(transformers, config_class)(**(tiny if config is None else config))
    cfg._attn_implementation = "eager"
    return getattr(transformers, model_class)(cfg).eval()


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random: matrices N(0, 0.2²), norm weights 1 + N(0, 0.1²), biases N(0, 0.1²)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():  # a tied head is one parameter, visited once
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() >= 2:
                param.copy_(0.2 * noise)
            elif "norm" in key or key.split(".")[-2].startswith("ln"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def published_state_dict(name: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as the published checkpoint names them: no tied head, no buffers, the hub's prefix."""
    prefix = SPECS[name][3]
    tied = getattr(model.config, "tie_word_embeddings", True)
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue  # tied to the token embedding: the published files store it once
        state[key.removeprefix(prefix)] = value.detach().clone().contiguous()
    return state


def write(name: str, seed: int = 123) -> None:
    """Build NAME's tiny random model and write its two files in data/."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = build(name)
    _randomise(model, seed)
    vocab = model.config.vocab_size
    input_ids = torch.randint(0, vocab, (SEQUENCES, TOKENS), generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        logits = model(input_ids).logits.float().contiguous()
    config = {**SPECS[name][2], "torch_dtype": "float32"}
    save_file(published_state_dict(name, model), weights_path(name), metadata={"config": json.dumps(config)})
    save_file({"input_ids": input_ids, "logits": logits}, logits_path(name))
    print(f"wrote {weights_path(name).relative_to(DATA.parent)} and {logits_path(name).name} ({vocab} tokens)")


def load(name: str):
    """The committed files: (transformers config dict, the weights as published, input_ids, logits)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(weights_path(name), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
    expected = load_file(logits_path(name))
    return config, load_file(weights_path(name)), expected["input_ids"], expected["logits"]


def transformers_logits(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the logits transformers computes from the committed files, the committed logits)."""
    config, weights, input_ids, logits = load(name)
    config.pop("torch_dtype", None)
    model = build(name, config)
    prefix = SPECS[name][3]
    missing, unexpected = model.load_state_dict({prefix + key: value for key, value in weights.items()}, strict=False)
    assert not unexpected, f"keys transformers does not know: {unexpected}"
    assert set(missing) <= {"lm_head.weight"}, f"keys missing from the file: {missing}"
    model.tie_weights()
    with torch.no_grad():
        return model(input_ids).logits, logits


if __name__ == "__main__":
    for wanted in sys.argv[1:] or SPECS:
        write(wanted)
