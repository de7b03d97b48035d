"""The tiny checkpoints in data/ are what ``transformers`` says they are (tests/transformers_fixtures.py).

The graders of GPT-2 weight loading (ch05_pretraining), ch05_llama and ch05_qwen3 compare the student's model,
loaded from data/tiny-<name>.safetensors through the student's own loading function, with the logits in
data/tiny-<name>-logits.safetensors, and with the course's reference. These tests tie both to ``transformers``:
its model, rebuilt from the file's config and weights, gives the committed logits, and so does the reference.
Nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests import transformers_fixtures as fixtures

pytest.importorskip("transformers", reason="the dev extra (pip install -e .[dev]) provides transformers")


@pytest.mark.parametrize("name", sorted(fixtures.SPECS))
def test_transformers_gives_the_committed_logits(name):
    got, committed = fixtures.transformers_logits(name)
    assert committed.shape == (fixtures.SEQUENCES, fixtures.TOKENS, fixtures.SPECS[name][2]["vocab_size"])
    torch.testing.assert_close(got, committed, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(fixtures.SPECS))
def test_every_weight_is_random_and_named_as_published(name):
    config, weights, _, _ = fixtures.load(name)
    assert json.loads(json.dumps(config))  # plain JSON in the metadata
    assert "lm_head.weight" not in weights, "tied heads are stored once, as in the published checkpoints"
    prefix = fixtures.SPECS[name][3]
    assert not prefix or not any(key.startswith(prefix) for key in weights)
    for key, value in weights.items():  # no weight left at transformers' ones-and-zeros initialisation
        assert value.std() > 0.05, key


def test_the_gpt2_reference_loader_gives_the_logits_of_transformers():
    from reference.gpt2_weights import load_gpt2_safetensors

    config, _, input_ids, logits = fixtures.load("gpt2")
    model, cfg = load_gpt2_safetensors(fixtures.weights_path("gpt2"), n_heads=config["n_head"])
    assert cfg["context_length"] == config["n_positions"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids), logits, rtol=0, atol=1e-4)
