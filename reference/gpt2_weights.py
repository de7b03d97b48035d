"""Chapter 5: loading OpenAI's pretrained GPT-2 weights into :class:`reference.gpt.GPTModel`.

The weights come in the Hugging Face layout, a ``model.safetensors`` file (as published for
``openai-community/gpt2``, ``gpt2-medium``, ``gpt2-large`` and ``gpt2-xl``, or as written by
``transformers``' ``save_pretrained``). Its names and conventions differ from the book's model:

=================================  ==========================================================================
Hugging Face key                   :class:`~reference.gpt.GPTModel`
=================================  ==========================================================================
``wte.weight`` (vocab, emb)        ``tok_emb.weight``, and also ``out_head.weight``: GPT-2 ties its output
                                   head to the token embedding (unless the file has its own ``lm_head``)
``wpe.weight`` (context, emb)      ``pos_emb.weight``
``h.N.ln_1.weight`` / ``.bias``    ``trf_blocks[N].norm1.scale`` / ``.shift`` (``ln_2``: ``norm2``)
``h.N.attn.c_attn`` (emb, 3 emb)   the query, key and value projections fused side by side: split the last
                                   dimension in three for ``att.W_query``, ``att.W_key``, ``att.W_value``
``h.N.attn.c_proj`` (emb, emb)     ``att.out_proj``
``h.N.mlp.c_fc`` (emb, 4 emb)      ``ff.layers[0]``
``h.N.mlp.c_proj`` (4 emb, emb)    ``ff.layers[2]``
``ln_f.weight`` / ``.bias``        ``final_norm.scale`` / ``.shift``
=================================  ==========================================================================

GPT-2's linear layers are ``Conv1D`` modules that store their weight as (in, out); ``nn.Linear`` stores
(out, in), so every weight matrix is transposed. Files written from ``GPT2LMHeadModel`` prefix every key
with ``transformer.``; some files also hold the attention masks ``h.N.attn.bias`` and
``h.N.attn.masked_bias``, which are buffers, not weights, and are skipped (the model has its own mask).

GPT-2 has biases in the query/key/value projections, so the model needs ``qkv_bias=True``:
:func:`gpt2_config` gives the four sizes' configurations.

Command line (nothing is downloaded; the file must already be on disk)::

    python -m reference.gpt2_weights --weights PATH --prompt "Every effort moves you" [--max-new-tokens 25]

PATH is a ``model.safetensors`` file or a folder holding one. The size is inferred from the shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys

import torch

from reference.gpt import GPTModel

__all__ = [
    "GPT2_BASE_CONFIG",
    "GPT2_MODEL_CONFIGS",
    "GPT2WeightsError",
    "gpt2_config",
    "normalize_gpt2_state_dict",
    "infer_gpt2_config",
    "convert_gpt2_state_dict",
    "load_weights_into_gpt",
    "load_gpt2_safetensors",
]

# What the four GPT-2 sizes share (the book's BASE_CONFIG in its weight-loading notebooks).
GPT2_BASE_CONFIG = {
    "vocab_size": 50257,
    "context_length": 1024,  # GPT-2 was trained with 1,024 positions
    "drop_rate": 0.0,  # no dropout when using (or finetuning) a pretrained model
    "qkv_bias": True,  # GPT-2's query/key/value projections have biases
}

# The book's names for the four sizes, and how they differ.
GPT2_MODEL_CONFIGS = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}

# The number of heads cannot be read off the weights' shapes; for GPT-2 it follows from the width.
_HEADS_BY_EMB_DIM = {size["emb_dim"]: size["n_heads"] for size in GPT2_MODEL_CONFIGS.values()}

# Mask buffers some files carry; they are not weights.
_SKIPPED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


class GPT2WeightsError(ValueError):
    """A GPT-2 weights file is missing, unreadable, or does not fit the model (the message says which key)."""


def gpt2_config(model_size: str = "124M", **overrides) -> dict:
    """The GPTModel configuration of a GPT-2 size: "124M", "355M", "774M", "1558M" or the book's names.

    Also accepted: "gpt2-small (124M)", "gpt2-small", "small", "gpt2" (= small), "gpt2-medium", "medium",
    and so on. ``overrides`` replace entries (e.g. ``drop_rate=0.1``).
    """
    wanted = model_size.strip().lower()
    aliases = {"gpt2": "gpt2-small (124M)"}
    for name in GPT2_MODEL_CONFIGS:  # "gpt2-small (124M)" answers to "gpt2-small", "small" and "124m"
        short, size = name.split(" ")
        for alias in (name.lower(), short, short.removeprefix("gpt2-"), size.strip("()").lower()):
            aliases[alias] = name
    if wanted not in aliases:
        raise ValueError(f"Unknown GPT-2 size {model_size!r}; choose one of: {', '.join(GPT2_MODEL_CONFIGS)}")
    return {**GPT2_BASE_CONFIG, **GPT2_MODEL_CONFIGS[aliases[wanted]], **overrides}


def normalize_gpt2_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hugging Face keys without the ``transformer.`` prefix and without the attention mask buffers."""
    params = {}
    for key, value in state_dict.items():
        key = key.removeprefix("transformer.")
        if _SKIPPED.match(key):
            continue
        params[key] = value
    return params


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def infer_gpt2_config(params: dict[str, torch.Tensor], n_heads: int | None = None, **overrides) -> dict:
    """The GPTModel configuration that fits a (normalized) GPT-2 state dict.

    vocab_size and emb_dim come from ``wte``, context_length from ``wpe``, n_layers from the highest block
    number. The number of heads is not in the shapes: give ``n_heads``, or it is taken from GPT-2's sizes
    (emb_dim 768: 12, 1024: 16, 1280: 20, 1600: 25).
    """
    if "tok_emb.weight" in params:
        raise GPT2WeightsError(
            "These weights are already in GPTModel's own layout (tok_emb.weight, trf_blocks.…), like the book's "
            "gpt2-small-124M.safetensors: load them with model.load_state_dict(safetensors.torch.load_file(path))."
        )
    for key in ("wte.weight", "wpe.weight"):
        if key not in params:
            raise GPT2WeightsError(f"Not GPT-2 weights: the key {key!r} is missing (found e.g. {sorted(params)[:5]}).")
    vocab_size, emb_dim = _shape(params["wte.weight"])
    context_length = _shape(params["wpe.weight"])[0]
    blocks = {int(match.group(1)) for key in params if (match := re.match(r"^h\.(\d+)\.", key))}
    if not blocks:
        raise GPT2WeightsError("Not GPT-2 weights: no transformer block (keys 'h.0.…') found.")
    if n_heads is None:
        if emb_dim not in _HEADS_BY_EMB_DIM:
            raise GPT2WeightsError(
                f"The number of attention heads cannot be inferred for emb_dim {emb_dim} (not a GPT-2 size): "
                "pass n_heads (or keep the config.json written with the weights next to them)."
            )
        n_heads = _HEADS_BY_EMB_DIM[emb_dim]
    cfg = {
        **GPT2_BASE_CONFIG,
        "vocab_size": vocab_size,
        "context_length": context_length,
        "emb_dim": emb_dim,
        "n_layers": max(blocks) + 1,
        "n_heads": n_heads,
    }
    return {**cfg, **overrides}


def _expected_gpt2_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key a GPT-2 state dict of this configuration must have, with its shape."""
    emb, vocab = cfg["emb_dim"], cfg["vocab_size"]
    shapes = {"wte.weight": (vocab, emb), "wpe.weight": (cfg["context_length"], emb)}
    for b in range(cfg["n_layers"]):
        for name, shape in (
            ("ln_1.weight", (emb,)),
            ("ln_1.bias", (emb,)),
            ("attn.c_attn.weight", (emb, 3 * emb)),  # Conv1D: (in, out), out = query | key | value
            ("attn.c_attn.bias", (3 * emb,)),
            ("attn.c_proj.weight", (emb, emb)),
            ("attn.c_proj.bias", (emb,)),
            ("ln_2.weight", (emb,)),
            ("ln_2.bias", (emb,)),
            ("mlp.c_fc.weight", (emb, 4 * emb)),
            ("mlp.c_fc.bias", (4 * emb,)),
            ("mlp.c_proj.weight", (4 * emb, emb)),
            ("mlp.c_proj.bias", (emb,)),
        ):
            shapes[f"h.{b}.{name}"] = shape
    shapes["ln_f.weight"] = (emb,)
    shapes["ln_f.bias"] = (emb,)
    return shapes


def convert_gpt2_state_dict(params: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """Map a GPT-2 state dict (Hugging Face keys, prefix optional) to GPTModel's keys for ``cfg``.

    Every key the configuration needs is checked for presence and shape first; a problem raises
    :class:`GPT2WeightsError` naming the key, its shape and the expected one. Keys the model has no use
    for (other than the mask buffers) are reported too: they mean the file is not the model it claims.
    The result has no ``att.mask`` entries (the model keeps its own).
    """
    params = normalize_gpt2_state_dict(params)
    expected = _expected_gpt2_shapes(cfg)
    for key, shape in expected.items():
        if key not in params:
            raise GPT2WeightsError(f"GPT-2 weights: the key {key!r} is missing (expected shape {shape}).")
        if _shape(params[key]) != shape:
            raise GPT2WeightsError(
                f"GPT-2 weights: the key {key!r} has shape {_shape(params[key])}, expected {shape} for "
                f"emb_dim {cfg['emb_dim']}, vocab_size {cfg['vocab_size']}, context_length {cfg['context_length']}."
            )
    unexpected = sorted(set(params) - set(expected) - {"lm_head.weight"})
    if unexpected:
        raise GPT2WeightsError(
            f"GPT-2 weights: {len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}: the file does not "
            f"match a model with {cfg['n_layers']} layers."
        )

    def linear(weight: torch.Tensor) -> torch.Tensor:
        return weight.T  # Conv1D (in, out) -> nn.Linear (out, in)

    sd = {"tok_emb.weight": params["wte.weight"], "pos_emb.weight": params["wpe.weight"]}
    for b in range(cfg["n_layers"]):
        p, t = f"h.{b}.", f"trf_blocks.{b}."
        q_w, k_w, v_w = torch.chunk(params[p + "attn.c_attn.weight"], 3, dim=-1)  # 3 x (emb, emb)
        q_b, k_b, v_b = torch.chunk(params[p + "attn.c_attn.bias"], 3, dim=-1)  # 3 x (emb,)
        sd.update(
            {
                t + "att.W_query.weight": linear(q_w),
                t + "att.W_key.weight": linear(k_w),
                t + "att.W_value.weight": linear(v_w),
                t + "att.W_query.bias": q_b,
                t + "att.W_key.bias": k_b,
                t + "att.W_value.bias": v_b,
                t + "att.out_proj.weight": linear(params[p + "attn.c_proj.weight"]),
                t + "att.out_proj.bias": params[p + "attn.c_proj.bias"],
                t + "ff.layers.0.weight": linear(params[p + "mlp.c_fc.weight"]),
                t + "ff.layers.0.bias": params[p + "mlp.c_fc.bias"],
                t + "ff.layers.2.weight": linear(params[p + "mlp.c_proj.weight"]),
                t + "ff.layers.2.bias": params[p + "mlp.c_proj.bias"],
                t + "norm1.scale": params[p + "ln_1.weight"],
                t + "norm1.shift": params[p + "ln_1.bias"],
                t + "norm2.scale": params[p + "ln_2.weight"],
                t + "norm2.shift": params[p + "ln_2.bias"],
            }
        )
    sd["final_norm.scale"] = params["ln_f.weight"]
    sd["final_norm.shift"] = params["ln_f.bias"]
    # Weight tying: GPT-2's output head is its token embedding.
    sd["out_head.weight"] = params.get("lm_head.weight", params["wte.weight"])
    return sd


def load_weights_into_gpt(gpt: GPTModel, params: dict[str, torch.Tensor]) -> GPTModel:
    """Copy a GPT-2 state dict (Hugging Face layout) into ``gpt``; return ``gpt``.

    ``gpt`` must be built with the matching configuration (:func:`gpt2_config`, or
    :func:`infer_gpt2_config` for other sizes) and ``qkv_bias=True``. The values are copied into the
    model's existing parameters (cast to their dtype and device), so an optimizer made earlier stays valid
    and the model's own mask buffers are kept. The book assigns new ``nn.Parameter`` objects instead, which
    makes the output head share the embedding's memory; here the two are equal copies.
    """
    cfg = {
        "vocab_size": gpt.tok_emb.num_embeddings,
        "context_length": gpt.pos_emb.num_embeddings,
        "emb_dim": gpt.tok_emb.embedding_dim,
        "n_layers": len(gpt.trf_blocks),
    }
    converted = convert_gpt2_state_dict(params, cfg)
    own = gpt.state_dict()
    for key, value in converted.items():
        if key not in own:
            hint = " Build the model with qkv_bias=True: GPT-2 has query/key/value biases." if "W_" in key else ""
            raise GPT2WeightsError(f"The model has no parameter {key!r} for the GPT-2 weights.{hint}")
        if own[key].shape != value.shape:
            raise GPT2WeightsError(
                f"The model's {key!r} has shape {tuple(own[key].shape)}; the GPT-2 weights give {tuple(value.shape)}."
            )
    missing = [key for key in own if key not in converted and not key.endswith(".att.mask")]
    if missing:
        raise GPT2WeightsError(f"The GPT-2 weights have nothing for the model's {missing[:3]}.")
    gpt.load_state_dict(converted, strict=False)  # strict except for the masks, checked above
    return gpt


def _safetensors_path(path: str | os.PathLike[str]) -> pathlib.Path:
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        candidates = [path / "model.safetensors", *sorted(path.glob("*.safetensors"))]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise GPT2WeightsError(f"No model.safetensors (or other .safetensors file) in the folder {path}.")
    if not path.exists():
        raise GPT2WeightsError(
            f"{path} does not exist. Give the path of GPT-2's model.safetensors or of a folder holding it, "
            "e.g. the file from https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors "
            "(nothing is downloaded for you)."
        )
    return path


def load_gpt2_safetensors(
    path: str | os.PathLike[str], n_heads: int | None = None, device="cpu", **overrides
) -> tuple[GPTModel, dict]:
    """Build a GPTModel from a GPT-2 ``.safetensors`` file (or a folder with ``model.safetensors``).

    The configuration is inferred from the shapes (:func:`infer_gpt2_config`); the number of heads comes
    from ``n_heads``, else from a ``config.json`` next to the file (``n_head``, as ``save_pretrained``
    writes it), else from GPT-2's sizes. ``overrides`` replace configuration entries (e.g. ``drop_rate``).
    Returns ``(model, cfg)`` with the model in eval mode on ``device``.
    """
    try:
        from safetensors.torch import load_file
    except ImportError as error:  # pragma: no cover - safetensors is a dependency of the course
        message = "Reading .safetensors files needs the package safetensors: pip install safetensors"
        raise GPT2WeightsError(message) from error

    file = _safetensors_path(path)
    try:
        state_dict = load_file(str(file))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types; name the file
        raise GPT2WeightsError(f"Cannot read {file} as a safetensors file: {error}") from error
    params = normalize_gpt2_state_dict(state_dict)

    config_json = file.parent / "config.json"
    if n_heads is None and config_json.is_file():
        n_heads = json.loads(config_json.read_text(encoding="utf-8")).get("n_head")
    cfg = infer_gpt2_config(params, n_heads=n_heads, **overrides)
    model = GPTModel(cfg)
    load_weights_into_gpt(model, params)
    return model.to(device).eval(), cfg


def main(argv: list[str] | None = None) -> int:
    from reference.pretraining import generate, text_to_token_ids, token_ids_to_text
    from reference.tiktoken_offline import get_gpt2_tokenizer

    parser = argparse.ArgumentParser(
        prog="python -m reference.gpt2_weights",
        description="Load GPT-2 weights (Hugging Face model.safetensors) into the book's GPTModel and generate text.",
    )
    parser.add_argument("--weights", required=True, metavar="PATH", help="model.safetensors or a folder holding it")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=25)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--n-heads", type=int, default=None, help="only for widths that are not a GPT-2 size")
    args = parser.parse_args(argv)

    try:
        model, cfg = load_gpt2_safetensors(args.weights, n_heads=args.n_heads)
    except GPT2WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    tokenizer = get_gpt2_tokenizer()
    torch.manual_seed(args.seed)
    token_ids = generate(
        model,
        text_to_token_ids(args.prompt, tokenizer),
        max_new_tokens=args.max_new_tokens,
        context_size=cfg["context_length"],
        temperature=args.temperature,
        top_k=args.top_k,
        eos_id=50256,
    )
    n_params = sum(p.numel() for p in model.parameters()) - model.out_head.weight.numel()
    print(f"GPT-2 with {cfg['n_layers']} layers, emb_dim {cfg['emb_dim']}, {cfg['n_heads']} heads "
          f"({n_params:,} parameters with the output head tied)", file=sys.stderr)
    print(token_ids_to_text(token_ids, tokenizer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
