"""Tests of reference/pretraining.py (chapter 5: pretraining on unlabeled data)."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reference import pretraining
from reference.gpt import GPT_CONFIG_DEMO, GPTModel, generate_text_simple
from reference.pretraining import (
    calc_loss_batch,
    calc_loss_loader,
    create_demo_loaders,
    evaluate_model,
    generate,
    generate_and_print_sample,
    load_checkpoint,
    plot_losses,
    read_corpus,
    save_checkpoint,
    text_to_token_ids,
    token_ids_to_text,
    train_model_simple,
)
from reference.tiktoken_offline import get_gpt2_tokenizer

TINY = {
    "vocab_size": 50,
    "context_length": 8,
    "emb_dim": 12,
    "n_heads": 3,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": False,
}
EOS = 49


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from several threads, and lose a lot when other processes load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CharTokenizer:
    """Letters a-z and space as ids 0-26: enough for a tiny model's samples (tiktoken ids exceed its vocab)."""

    alphabet = "abcdefghijklmnopqrstuvwxyz "

    def encode(self, text, allowed_special=None):
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.alphabet[i] if i < len(self.alphabet) else "#" for i in ids)


class FixedLogits(nn.Module):
    """A 'model' that gives every position of every row the same logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, idx):
        return self.logits.expand(idx.shape[0], idx.shape[1], -1).clone()


class Scripted(nn.Module):
    """A 'model' whose greedy choice for row r at generation step s is script[r][s] (vocab_size 50)."""

    def __init__(self, script, prompt_length):
        super().__init__()
        self.script = script
        self.prompt_length = prompt_length

    def forward(self, idx):
        logits = torch.zeros(idx.shape[0], idx.shape[1], 50)
        step = idx.shape[1] - self.prompt_length
        for row, tokens in enumerate(self.script):
            logits[row, -1, tokens[step]] = 1.0
        return logits


def _tiny(seed: int = 123) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(TINY).eval()


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, TINY["vocab_size"], (2, 8), generator=generator)
    targets = torch.randint(0, TINY["vocab_size"], (2, 8), generator=generator)
    return inputs, targets


def _loader(n_batches: int, batch_size: int = 2, seed: int = 0) -> DataLoader:
    """Windows cut from one random token stream, targets shifted by one, as GPTDatasetV1 makes them."""
    stream = torch.randint(0, TINY["vocab_size"], (n_batches * batch_size * 8 + 1,),
                           generator=torch.Generator().manual_seed(seed))
    inputs = stream[:-1].view(-1, 8)
    targets = stream[1:].view(-1, 8)
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=False)


# --- text <-> ids ---------------------------------------------------------------------------------------


def test_text_to_token_ids_is_a_batch_of_one():
    ids = text_to_token_ids("Hello, I am", get_gpt2_tokenizer())
    assert ids.tolist() == [[15496, 11, 314, 716]]


def test_text_to_token_ids_allows_end_of_text():
    ids = text_to_token_ids("Hi<|endoftext|>", get_gpt2_tokenizer())
    assert ids[0, -1].item() == 50256


def test_token_ids_to_text_round_trip():
    tokenizer = get_gpt2_tokenizer()
    text = "Every effort moves you"
    assert token_ids_to_text(text_to_token_ids(text, tokenizer), tokenizer) == text


# --- losses ---------------------------------------------------------------------------------------------


def test_calc_loss_batch_of_a_seeded_tiny_model():
    inputs, targets = _batch()
    loss = calc_loss_batch(inputs, targets, _tiny(), "cpu")
    assert loss.item() == pytest.approx(4.220783, abs=1e-5)


def test_calc_loss_batch_is_the_mean_negative_log_probability_of_the_targets():
    model = _tiny()
    inputs, targets = _batch()
    log_probs = torch.log_softmax(model(inputs), dim=-1)  # (2, 8, 50)
    expected = -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    assert torch.allclose(calc_loss_batch(inputs, targets, model, "cpu"), expected, atol=1e-6)


def test_calc_loss_batch_keeps_the_graph_for_training():
    inputs, targets = _batch()
    assert calc_loss_batch(inputs, targets, _tiny(), "cpu").requires_grad


def test_uniform_logits_give_a_loss_of_ln_vocab_size():
    inputs, targets = _batch()
    loss = calc_loss_batch(inputs, targets, FixedLogits(torch.zeros(50)), "cpu")
    assert loss.item() == pytest.approx(math.log(50), abs=1e-6)


def test_calc_loss_loader_averages_the_batch_losses():
    model, loader = _tiny(), _loader(3)
    with torch.no_grad():
        expected = sum(calc_loss_batch(x, y, model, "cpu").item() for x, y in loader) / 3
        assert calc_loss_loader(loader, model, "cpu") == pytest.approx(expected, abs=1e-6)


def test_calc_loss_loader_with_num_batches_uses_the_first_batches():
    model, loader = _tiny(), _loader(3)
    with torch.no_grad():
        first_two = [calc_loss_batch(x, y, model, "cpu").item() for x, y in list(loader)[:2]]
        assert calc_loss_loader(loader, model, "cpu", num_batches=2) == pytest.approx(sum(first_two) / 2, abs=1e-6)


def test_calc_loss_loader_caps_num_batches_at_the_loader_length():
    model, loader = _tiny(), _loader(3)
    with torch.no_grad():
        assert calc_loss_loader(loader, model, "cpu", num_batches=10) == pytest.approx(
            calc_loss_loader(loader, model, "cpu"), abs=1e-7
        )


def test_calc_loss_loader_of_an_empty_loader_is_nan():
    empty = DataLoader(TensorDataset(torch.zeros(0, 8, dtype=torch.long), torch.zeros(0, 8, dtype=torch.long)))
    assert math.isnan(calc_loss_loader(empty, _tiny(), "cpu"))


def test_evaluate_model_turns_dropout_off_and_restores_training_mode():
    torch.manual_seed(0)
    model = GPTModel({**TINY, "drop_rate": 0.5}).train()
    loader = _loader(2)
    first = evaluate_model(model, loader, loader, "cpu", eval_iter=2)
    second = evaluate_model(model, loader, loader, "cpu", eval_iter=2)
    assert first == second
    assert first[0] == first[1]
    assert model.training


# --- training -------------------------------------------------------------------------------------------


def _train(num_epochs: int = 3, eval_freq: int = 2, lr: float = 5e-3):
    model = _tiny()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    train_loader, val_loader = _loader(3, seed=1), _loader(1, seed=2)
    result = train_model_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=num_epochs, eval_freq=eval_freq,
        eval_iter=2, start_context="hello", tokenizer=CharTokenizer(),
    )
    return model, train_loader, result


def test_training_lowers_the_training_loss():
    model, train_loader, (train_losses, _, _) = _train(num_epochs=4)
    assert train_losses[-1] < train_losses[0] - 0.5


def test_training_returns_one_entry_per_evaluation():
    _, _, (train_losses, val_losses, tokens_seen) = _train(num_epochs=3, eval_freq=2)
    # 3 epochs x 3 batches = 9 steps, evaluated after steps 0, 2, 4, 6 and 8.
    assert len(train_losses) == 5
    assert len(val_losses) == 5
    assert len(tokens_seen) == 5


def test_training_counts_the_tokens_seen():
    _, _, (_, _, tokens_seen) = _train(num_epochs=3, eval_freq=2)
    assert tokens_seen == [16, 48, 80, 112, 144]  # (step + 1) x batch 2 x 8 tokens


def test_training_prints_the_losses_and_a_sample_per_epoch(capsys):
    _train(num_epochs=2, eval_freq=3)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Ep 1 (Step 000000): Train loss ")
    assert ", Val loss " in lines[0]
    assert sum(line.startswith("hello") for line in lines) == 2


def test_training_writes_nothing_to_stderr_by_default(capsys):
    _train(num_epochs=1)
    assert capsys.readouterr().err == ""


def test_training_progress_bar_goes_to_stderr(capsys):
    model = _tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = _loader(2)
    train_model_simple(model, loader, loader, optimizer, "cpu", 1, 5, 1, "a", CharTokenizer(), progress=True)
    assert "2/2" in capsys.readouterr().err


def test_generate_and_print_sample_prints_fifty_new_tokens_and_keeps_training_mode(capsys):
    model = _tiny().train()
    generate_and_print_sample(model, CharTokenizer(), "cpu", "abc")
    printed = capsys.readouterr().out
    assert printed.startswith("abc")
    assert len(printed.rstrip("\n")) == 53
    assert model.training


# --- generate -------------------------------------------------------------------------------------------


def test_generate_with_temperature_zero_is_greedy():
    model = _tiny()
    idx = torch.randint(0, 50, (3, 2), generator=torch.Generator().manual_seed(1))
    expected = generate_text_simple(model, idx, max_new_tokens=6, context_size=8)
    assert torch.equal(generate(model, idx, max_new_tokens=6, context_size=8), expected)


def test_generate_with_top_k_and_temperature_zero_is_still_greedy():
    model = _tiny()
    idx = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(2))
    expected = generate_text_simple(model, idx, max_new_tokens=4, context_size=8)
    assert torch.equal(generate(model, idx, max_new_tokens=4, context_size=8, top_k=3), expected)


def test_generate_sampling_is_reproducible_with_a_seed():
    model, idx = _tiny(), torch.zeros(1, 1, dtype=torch.long)
    torch.manual_seed(5)
    first = generate(model, idx, 10, 8, temperature=1.5, top_k=20)
    torch.manual_seed(5)
    assert torch.equal(generate(model, idx, 10, 8, temperature=1.5, top_k=20), first)


def test_top_k_keeps_every_token_tied_with_the_kth_largest():
    # Logits 5, 3, 3, 3, 1, 0, ...: with top_k=2 the k-th largest is 3, and all three 3s are kept.
    logits = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0] + [0.0] * 45)
    torch.manual_seed(0)
    out = generate(FixedLogits(logits), torch.zeros(400, 1, dtype=torch.long), 1, 8, temperature=5.0, top_k=2)
    sampled = set(out[:, 1].tolist())
    assert sampled == {0, 1, 2, 3}


def test_top_k_excludes_everything_below_the_kth_largest():
    logits = torch.arange(50, dtype=torch.float32)  # token 49 is the most likely
    torch.manual_seed(0)
    out = generate(FixedLogits(logits), torch.zeros(300, 1, dtype=torch.long), 1, 8, temperature=100.0, top_k=3)
    assert set(out[:, 1].tolist()) == {47, 48, 49}


def test_top_k_works_row_by_row_in_a_batch():
    model = _tiny()
    idx = torch.randint(0, 50, (3, 2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        allowed = torch.topk(model(idx)[:, -1], 2).indices  # (3, 2)
    torch.manual_seed(0)
    out = generate(model, idx, max_new_tokens=1, context_size=8, temperature=10.0, top_k=2)
    assert all(out[row, -1] in allowed[row] for row in range(3))


def test_low_temperature_sampling_picks_the_most_likely_token():
    model = _tiny()
    idx = torch.randint(0, 50, (4, 2), generator=torch.Generator().manual_seed(4))
    expected = generate_text_simple(model, idx, max_new_tokens=5, context_size=8)
    torch.manual_seed(0)
    assert torch.equal(generate(model, idx, max_new_tokens=5, context_size=8, temperature=1e-4), expected)


def test_generate_crops_to_the_context_size():
    model = _tiny()
    idx = torch.randint(0, 50, (1, 3), generator=torch.Generator().manual_seed(5))
    expected = generate_text_simple(model, idx, max_new_tokens=9, context_size=4)
    assert torch.equal(generate(model, idx, max_new_tokens=9, context_size=4), expected)


def test_eos_ends_a_single_sequence_before_the_eos_token():
    model = Scripted([[5, 6, EOS, 7, 8]], prompt_length=2)
    out = generate(model, torch.zeros(1, 2, dtype=torch.long), max_new_tokens=5, context_size=8, eos_id=EOS)
    assert out.tolist() == [[0, 0, 5, 6]]


def test_eos_in_a_batch_pads_finished_rows_and_stops_when_all_are_done():
    # Row 0 finishes at step 1, row 2 at step 2, row 1 at step 3 (the last): step 3 is not appended.
    script = [[5, EOS, 1, 1, 1], [6, 7, 8, EOS, 1], [9, 9, EOS, 1, 1]]
    out = generate(Scripted(script, 1), torch.zeros(3, 1, dtype=torch.long), 5, 8, eos_id=EOS)
    assert out.tolist() == [[0, 5, EOS, EOS], [0, 6, 7, 8], [0, 9, 9, EOS]]


def test_eos_in_a_batch_runs_to_max_new_tokens_while_a_row_is_unfinished():
    script = [[5, EOS, 1, 1], [6, 7, 8, 9]]
    out = generate(Scripted(script, 1), torch.zeros(2, 1, dtype=torch.long), 4, 8, eos_id=EOS)
    assert out.tolist() == [[0, 5, EOS, EOS, EOS], [0, 6, 7, 8, 9]]


def test_eos_rows_finishing_together_end_without_it():
    script = [[5, EOS, 1], [6, EOS, 1]]
    out = generate(Scripted(script, 1), torch.zeros(2, 1, dtype=torch.long), 3, 8, eos_id=EOS)
    assert out.tolist() == [[0, 5], [0, 6]]


def test_without_eos_id_the_eos_token_is_an_ordinary_token():
    script = [[5, EOS, 6]]
    out = generate(Scripted(script, 1), torch.zeros(1, 1, dtype=torch.long), 3, 8)
    assert out.tolist() == [[0, 5, EOS, 6]]


# --- checkpoints ----------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    model = _tiny().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    inputs, targets = _batch()
    calc_loss_batch(inputs, targets, model, "cpu").backward()
    optimizer.step()
    path = tmp_path / "model_and_optimizer.pth"
    save_checkpoint(model, optimizer, path)

    assert set(torch.load(path, weights_only=True)) == {"model_state_dict", "optimizer_state_dict"}
    restored = GPTModel(TINY)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=5e-4, weight_decay=0.1)
    load_checkpoint(path, restored, restored_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert restored.training
    state, restored_state = optimizer.state_dict(), restored_optimizer.state_dict()
    assert restored_state["param_groups"][0]["lr"] == 4e-4
    assert all(torch.equal(state["state"][0][name], restored_state["state"][0][name]) for name in ("exp_avg", "step"))


def test_a_restored_optimizer_continues_training_identically(tmp_path):
    model = _tiny().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, targets = _batch()
    for _ in range(2):
        optimizer.zero_grad()
        calc_loss_batch(inputs, targets, model, "cpu").backward()
        optimizer.step()
    save_checkpoint(model, optimizer, tmp_path / "ckpt.pth")
    restored = GPTModel(TINY)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    load_checkpoint(tmp_path / "ckpt.pth", restored, restored_optimizer)
    for m, opt in ((model, optimizer), (restored, restored_optimizer)):
        opt.zero_grad()
        calc_loss_batch(inputs, targets, m, "cpu").backward()
        opt.step()
    assert torch.equal(model.out_head.weight, restored.out_head.weight)


# --- the plot -------------------------------------------------------------------------------------------


def test_plot_losses_writes_a_png(tmp_path):
    path = tmp_path / "loss.png"
    fig = plot_losses(torch.linspace(0, 2, 3), [10, 20, 30], [9.0, 7.0, 6.0], [9.5, 8.0, 7.5], save_path=path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_losses_has_both_curves_and_both_axes():
    fig = plot_losses([0, 1, 2], [10, 20, 30], [9.0, 7.0, 6.0], [9.5, 8.0, 7.5])
    ax1, ax2 = fig.axes
    assert [line.get_label() for line in ax1.get_lines()] == ["Training loss", "Validation loss"]
    assert ax1.get_xlabel() == "Epochs"
    assert ax2.get_xlabel() == "Tokens seen"


# --- the corpus and the demo ----------------------------------------------------------------------------


def test_the_corpus_is_a_short_plain_text_story():
    text = read_corpus()
    assert 18_000 <= len(text) <= 24_000
    assert text.isascii()
    assert text.count('"') >= 20  # it has dialogue


def test_the_demo_loaders_have_training_and_validation_batches():
    train_loader, val_loader = create_demo_loaders(read_corpus(), GPT_CONFIG_DEMO, 0.9, 4, seed=123)
    inputs, targets = next(iter(train_loader))
    assert inputs.shape == (4, GPT_CONFIG_DEMO["context_length"])
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert len(train_loader) >= 10
    assert len(val_loader) >= 1


def test_the_command_trains_and_writes_the_plot(tmp_path, capsys):
    short_text = tmp_path / "short.txt"
    short_text.write_text(read_corpus()[:3000], encoding="utf-8")
    plot = tmp_path / "loss.png"
    assert pretraining.main(["--plot", str(plot), "--epochs", "1", "--text", str(short_text)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "training tokens/s" in capsys.readouterr().out


# --- what the chapter 5 grader computes on its own side -------------------------------------------------------
# The grader names classic mistakes by recomputing generation and the loss with one mistake switched on, and
# trains with an AdamW of its own that records each step: with no mistake switched on, those must be the
# reference, or its diagnoses and expected values would be wrong.


@pytest.mark.parametrize("kwargs", [
    {"temperature": 0.0}, {"temperature": 1.3}, {"temperature": 0.7, "top_k": 3}, {"top_k": 2, "eos_id": 7},
    {"temperature": 2.0, "top_k": 5, "eos_id": 3},
])
def test_grader_generation_oracle_without_mistakes_is_the_reference(kwargs):
    from graders.ch05_pretraining import generate_with

    model = _tiny()
    idx = torch.randint(0, 50, (3, 2), generator=torch.Generator().manual_seed(9))
    torch.manual_seed(4)
    expected = generate(model, idx, 12, 8, **kwargs)
    torch.manual_seed(4)
    assert torch.equal(generate_with(model, idx, 12, 8, **kwargs), expected)


def test_grader_loss_oracle_without_mistakes_is_the_reference():
    from graders.ch05_pretraining import loss_with

    model, (inputs, targets) = _tiny(), _batch()
    torch.testing.assert_close(loss_with(model, inputs, targets), calc_loss_batch(inputs, targets, model, "cpu"))


def _steps(model, train_loader, val_loader, optimizer, device, num_epochs, tokenizer=None):
    """A bare training loop: the loss of every step."""
    losses = []
    for _ in range(num_epochs):
        for inputs, targets in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(inputs, targets, model, device)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def test_grader_training_probe_optimizer_is_adamw():
    """The AdamW written out in the grader's training probe trains as torch.optim.AdamW does."""
    from types import SimpleNamespace

    from graders.shared.gpt_training import training_run

    get_gpt2_tokenizer()  # the probe asks tiktoken for GPT-2's tokenizer
    torch.manual_seed(1)
    state = GPTModel(TINY).state_dict()
    train_data, val_data = _loader(3).dataset.tensors, _loader(1, seed=1).dataset.tensors
    settings = {"batch_size": 2, "lr": 5e-3, "seed": 123}
    run = training_run(SimpleNamespace(train=_steps), "train", TINY, state, train_data, val_data, settings,
                       {"num_epochs": 2})
    model = GPTModel(TINY)
    model.load_state_dict(state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
    torch.manual_seed(123)
    expected = _steps(model, _loader(3), None, optimizer, "cpu", 2)
    torch.testing.assert_close(torch.tensor(run["result"]), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert [lr for lr, _ in run["records"]] == [5e-3] * 6


# --- section 5.5: GPT-2's weights (the tiny random GPT-2 that transformers wrote, data/tiny-gpt2.safetensors) ------


def _tiny_gpt2():
    """The tiny checkpoint and its configuration in the book's vocabulary (as the notebook and the grader read it)."""
    from graders.shared.checkpoints import tiny_checkpoint

    checkpoint = tiny_checkpoint("gpt2")
    config = checkpoint.config
    cfg = {"vocab_size": config["vocab_size"], "context_length": config["n_positions"], "emb_dim": config["n_embd"],
           "n_heads": config["n_head"], "n_layers": config["n_layer"], "drop_rate": 0.0, "qkv_bias": True}
    return checkpoint, cfg


def test_load_weights_into_gpt_is_chapter_5s_name_for_the_gpt2_loader():
    from reference import gpt2_weights

    assert pretraining.load_weights_into_gpt is gpt2_weights.load_weights_into_gpt
    assert "load_weights_into_gpt" in pretraining.__all__


def test_load_weights_into_gpt_gives_transformers_logits_on_the_tiny_gpt2():
    checkpoint, cfg = _tiny_gpt2()
    torch.manual_seed(0)
    model = GPTModel(cfg)
    assert pretraining.load_weights_into_gpt(model, checkpoint.weights) is model
    with torch.no_grad():
        logits = model.eval()(checkpoint.input_ids)
    torch.testing.assert_close(logits, checkpoint.logits, atol=1e-4, rtol=0)


def test_load_weights_into_gpt_leaves_the_callers_params_alone():
    checkpoint, cfg = _tiny_gpt2()
    params = dict(checkpoint.weights)
    copies = {name: tensor.clone() for name, tensor in params.items()}
    pretraining.load_weights_into_gpt(GPTModel(cfg), params)
    assert params.keys() == copies.keys()
    assert all(torch.equal(params[name], copies[name]) for name in copies)


def test_grader_gpt2_mapping_without_mistakes_is_the_reference_model():
    from graders.ch05_pretraining import GPT2_CFG, gpt2_logits, gpt2_mapping

    checkpoint, cfg = _tiny_gpt2()
    assert GPT2_CFG == cfg
    model = pretraining.load_weights_into_gpt(GPTModel(cfg), checkpoint.weights)
    expected = {key: value for key, value in model.state_dict().items() if not key.endswith(".mask")}
    mapping = gpt2_mapping()
    assert mapping.keys() == expected.keys()
    assert all(torch.equal(mapping[key], expected[key]) for key in expected)
    torch.testing.assert_close(gpt2_logits(mapping), checkpoint.logits, atol=1e-4, rtol=0)


def test_each_gpt2_mistake_of_the_grader_changes_the_logits():
    """A Mistake whose result equals the right answer would name a mistake for a correct submission."""
    from graders.ch05_pretraining import WEIGHT_MISTAKES, gpt2_logits, gpt2_mapping

    right = gpt2_logits(gpt2_mapping())
    for mistake in WEIGHT_MISTAKES:
        assert (gpt2_logits(gpt2_mapping(**mistake.change)) - right).abs().max() > 1e-2, mistake.did


def test_the_gpt2_loader_matches_transformers_block_by_block():
    """The hidden states after each block of the loaded GPTModel equal those of transformers' GPT2LMHeadModel."""
    transformers = pytest.importorskip("transformers", reason="the dev extra provides transformers")
    checkpoint, cfg = _tiny_gpt2()
    config = {key: value for key, value in checkpoint.config.items() if key != "torch_dtype"}
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
    hf_model.transformer.load_state_dict(checkpoint.weights, strict=False)  # the masks are the model's own
    hf_model.tie_weights()
    model = pretraining.load_weights_into_gpt(GPTModel(cfg), checkpoint.weights).eval()
    with torch.no_grad():
        hidden = hf_model(checkpoint.input_ids, output_hidden_states=True).hidden_states  # embeddings, blocks..., ln_f
        x = model.drop_emb(model.tok_emb(checkpoint.input_ids) + model.pos_emb(torch.arange(12)))
        torch.testing.assert_close(x, hidden[0], atol=1e-5, rtol=0)
        for b, block in enumerate(model.trf_blocks[:-1]):
            x = block(x)
            torch.testing.assert_close(x, hidden[b + 1], atol=1e-4, rtol=0)
