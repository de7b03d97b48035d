"""The tiny random checkpoints in data/ that the weight-loading graders read (GPT-2, Llama 3.2, Qwen3).

tests/transformers_fixtures.py writes them with ``transformers`` and tests/test_transformers_fixtures.py proves
them: each weights file holds a tiny random model under the key names of the published checkpoint, and its logits
file holds transformers' logits for two sequences. Reading them needs only safetensors: grading never imports
``transformers``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

DATA_FOLDER = Path(__file__).resolve().parents[2] / "data"


@dataclass(frozen=True)
class TinyCheckpoint:
    config: dict  # transformers' configuration of the model (e.g. "hidden_size", "num_key_value_heads")
    weights: dict[str, torch.Tensor]  # as the published checkpoint names them
    input_ids: torch.Tensor  # (2, 12)
    logits: torch.Tensor  # (2, 12, vocab_size): what transformers computes for input_ids


def tiny_checkpoint(name: str) -> TinyCheckpoint:
    """data/tiny-<name>.safetensors and its logits: name is "gpt2", "llama32" or "qwen3"."""
    weights_file = DATA_FOLDER / f"tiny-{name}.safetensors"
    with safe_open(weights_file, framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
    expected = load_file(DATA_FOLDER / f"tiny-{name}-logits.safetensors")
    return TinyCheckpoint(config, load_file(weights_file), expected["input_ids"], expected["logits"])
