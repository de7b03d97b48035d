"""Tests of reference/instruction.py (chapter 7: finetuning to follow instructions)."""

from __future__ import annotations

import http.server
import json
import math
import socket
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from reference.gpt import GPTModel
from reference.instruction import (
    InstructionDataset,
    OllamaNotRunningError,
    custom_collate_draft_1,
    custom_collate_draft_2,
    custom_collate_fn,
    evaluate_responses,
    exact_match_score,
    extract_response,
    f1_score,
    format_input,
    generate_model_responses,
    generate_model_scores,
    judge_prompt,
    normalize_answer,
    query_model,
    split_data,
)
from reference.pretraining import (
    calc_loss_loader,
    generate,
    text_to_token_ids,
    token_ids_to_text,
    train_model_simple,
)
from reference.tiktoken_offline import get_gpt2_tokenizer
from tests.compact_vocab import CompactTokenizer, one_thread, tiny_gpt_config

DATA = Path(__file__).resolve().parents[1] / "data" / "instruction_data.json"
PAD = 50256

# The book's collate example (section 7.3) and its printed outputs.
BOOK_BATCH = ([0, 1, 2, 3, 4], [5, 6], [7, 8, 9])
BOOK_INPUTS = torch.tensor([[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]])
BOOK_TARGETS_DRAFT_2 = torch.tensor([[1, 2, 3, 4, PAD], [6, PAD, PAD, PAD, PAD], [8, 9, PAD, PAD, PAD]])
BOOK_TARGETS = torch.tensor([[1, 2, 3, 4, PAD], [6, PAD, -100, -100, -100], [8, 9, PAD, -100, -100]])


ENTRY_WITH_INPUT = {"instruction": "Correct the spelling.", "input": "recieve", "output": "receive"}
ENTRY_WITHOUT_INPUT = {"instruction": "Name a primary color.", "input": "", "output": "Red."}
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


@pytest.fixture(scope="module", autouse=True)
def _tiny_models_on_one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def data():
    return json.loads(DATA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compact(tokenizer, data):
    """GPT-2's tokens of the course's instruction data, renumbered (tests/compact_vocab.py)."""
    texts = [format_input(entry) + "\n\n### Response:\n" + entry["output"] for entry in data]
    return CompactTokenizer(tokenizer, texts + [format_input(ENTRY_WITHOUT_INPUT)])


def _tiny_model(compact: CompactTokenizer, seed: int = 123) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(tiny_gpt_config(len(compact)))


# --- the course's data ------------------------------------------------------------------------------------


def test_instruction_data_has_100_entries(data):
    assert len(data) == 100


def test_instruction_data_entries_have_the_books_keys(data):
    assert all(list(entry) == ["instruction", "input", "output"] for entry in data)


def test_instruction_data_mixes_entries_with_and_without_input(data):
    assert sum(1 for entry in data if entry["input"]) == 40


# --- format_input and the split ---------------------------------------------------------------------------


def test_format_input_with_input():
    expected = f"{PREAMBLE}\n\n### Instruction:\nCorrect the spelling.\n\n### Input:\nrecieve"
    assert format_input(ENTRY_WITH_INPUT) == expected


def test_format_input_without_input_leaves_out_the_input_section():
    assert format_input(ENTRY_WITHOUT_INPUT) == f"{PREAMBLE}\n\n### Instruction:\nName a primary color."


def test_split_data_book_sizes():
    train, val, test = split_data(list(range(1100)))
    assert (len(train), len(val), len(test)) == (935, 55, 110)


def test_split_data_test_comes_before_validation():
    train, val, test = split_data(list(range(1100)))
    assert (train[-1], test[0], test[-1], val[0]) == (934, 935, 1044, 1045)


def test_split_data_course_sizes(data):
    train, val, test = split_data(data)
    assert (len(train), len(val), len(test)) == (85, 5, 10)


# --- InstructionDataset -----------------------------------------------------------------------------------


def test_instruction_dataset_encodes_prompt_header_and_answer(tokenizer):
    dataset = InstructionDataset([ENTRY_WITH_INPUT, ENTRY_WITHOUT_INPUT], tokenizer)
    expected = tokenizer.encode(format_input(ENTRY_WITHOUT_INPUT) + "\n\n### Response:\nRed.")
    assert dataset[1] == expected


def test_instruction_dataset_length_and_data(tokenizer):
    entries = [ENTRY_WITH_INPUT, ENTRY_WITHOUT_INPUT]
    dataset = InstructionDataset(entries, tokenizer)
    assert len(dataset) == 2
    assert dataset.data is entries


def test_instruction_dataset_on_course_data_lengths(tokenizer, data):
    lengths = [len(item) for item in InstructionDataset(data, tokenizer)]
    assert (min(lengths), max(lengths)) == (41, 68)


# --- the collate functions on the book's example ---------------------------------------------------------


def test_collate_draft_1_book_example():
    assert torch.equal(custom_collate_draft_1(BOOK_BATCH), BOOK_INPUTS)


def test_collate_draft_2_book_example():
    inputs, targets = custom_collate_draft_2(BOOK_BATCH)
    assert torch.equal(inputs, BOOK_INPUTS)
    assert torch.equal(targets, BOOK_TARGETS_DRAFT_2)


def test_collate_fn_book_example_inputs():
    inputs, _ = custom_collate_fn(BOOK_BATCH)
    assert torch.equal(inputs, BOOK_INPUTS)


def test_collate_fn_book_example_targets():
    _, targets = custom_collate_fn(BOOK_BATCH)
    assert torch.equal(targets, BOOK_TARGETS)


def test_collate_fn_returns_long_tensors_on_the_device():
    inputs, targets = custom_collate_fn(BOOK_BATCH, device="cpu")
    assert (inputs.dtype, targets.dtype) == (torch.long, torch.long)
    assert (inputs.device.type, targets.device.type) == ("cpu", "cpu")


def test_collate_fn_does_not_change_the_dataset_items():
    batch = ([1, 2], [3])
    custom_collate_fn(batch)
    assert batch == ([1, 2], [3])


def test_collate_fn_keeps_the_first_end_of_text_of_every_row():
    _, targets = custom_collate_fn([[11, 12, 13], [21], [31, 32]])
    first_pad = [(row == PAD).nonzero()[0].item() for row in targets]
    assert first_pad == [2, 0, 1]  # right after each row's last real token


def test_collate_fn_longest_row_has_one_end_of_text_and_no_ignore_index():
    _, targets = custom_collate_fn([[11, 12, 13], [21]])
    assert targets[0].tolist() == [12, 13, PAD]


def test_collate_fn_custom_ignore_index_and_pad_token():
    inputs, targets = custom_collate_fn([[1, 2, 3], [4]], pad_token_id=0, ignore_index=-1)
    assert inputs.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert targets.tolist() == [[2, 3, 0], [0, -1, -1]]


def test_collate_fn_truncates_after_masking():
    inputs, targets = custom_collate_fn([[1, 2, 3, 4, 5, 6], [7, 8]], allowed_max_length=4)
    assert inputs.tolist() == [[1, 2, 3, 4], [7, 8, PAD, PAD]]
    assert targets.tolist() == [[2, 3, 4, 5], [8, PAD, -100, -100]]


def test_collate_fn_allowed_max_length_longer_than_the_batch_changes_nothing():
    full = custom_collate_fn(BOOK_BATCH)
    cut = custom_collate_fn(BOOK_BATCH, allowed_max_length=1024)
    assert all(torch.equal(a, b) for a, b in zip(full, cut))


def test_collate_fn_end_of_text_inside_an_item_counts_as_the_first():
    # The book masks by value: an end-of-text token already inside the item is "the first", and the one
    # appended after the answer becomes -100 (FACTS.md: every padding target after the FIRST end-of-text).
    _, targets = custom_collate_fn([[1, PAD, 2], [3, 4, 5, 6]])
    assert targets[0].tolist() == [PAD, 2, -100, -100]


def test_ignore_index_targets_add_nothing_to_the_loss():
    # The book's illustration: a third example with target -100 leaves the loss of the first two unchanged.
    logits = torch.tensor([[-1.0, 1.0], [-0.5, 1.5], [-0.5, 1.5]])
    loss_two = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([0, 1]))
    loss_three = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, -100]))
    loss_three_counted = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1]))
    assert round(loss_two.item(), 4) == 1.1269
    assert round(loss_three_counted.item(), 4) == 0.7936
    assert torch.equal(loss_two, loss_three)


def test_loss_of_a_row_does_not_depend_on_the_padding_of_its_batch(compact, data):
    # -100 on the padding: a row's summed loss is the same alone or next to a much longer row.
    model = _tiny_model(compact).eval()
    items = InstructionDataset(data[:2], compact)
    short, long = sorted([items[0], items[1]], key=len)
    long = long + long[:20]  # make sure it is longer

    def row_loss(batch):
        inputs, targets = custom_collate_fn(batch, pad_token_id=compact.eot_token)
        with torch.no_grad():
            logits = model(inputs)
        return torch.nn.functional.cross_entropy(logits[0], targets[0], reduction="sum")

    assert torch.allclose(row_loss([short]), row_loss([short, long]), rtol=0, atol=1e-4)


# --- responses --------------------------------------------------------------------------------------------


def test_extract_response():
    prompt = format_input(ENTRY_WITHOUT_INPUT)
    generated = prompt + "\n\n### Response:\nRed is a primary color.  "
    assert extract_response(generated, prompt) == "Red is a primary color."


def test_generate_model_responses_adds_the_answers_without_changing_the_data(compact, data):
    entries = [dict(entry) for entry in data[:2]]
    results = generate_model_responses(
        _tiny_model(compact), entries, compact, "cpu", max_new_tokens=5, eos_id=compact.eot_token
    )
    assert entries == data[:2]
    assert [list(r) for r in results] == [["instruction", "input", "output", "model_response"]] * 2
    assert all(isinstance(r["model_response"], str) for r in results)


def test_generate_model_responses_is_greedy_generation_after_the_prompt(compact, data):
    model = _tiny_model(compact)
    eos = compact.eot_token
    result = generate_model_responses(model, data[:1], compact, "cpu", max_new_tokens=6, eos_id=eos)[0]
    prompt = format_input(data[0])
    ids = generate(model, text_to_token_ids(prompt, compact), 6, context_size=96, eos_id=eos)
    assert result["model_response"] == extract_response(token_ids_to_text(ids, compact), prompt)


# --- finetuning through chapter 5's loop --------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuning_run(compact, data):
    """A short, seeded finetuning run of a tiny model on the course's instructions (CPU)."""
    train_data, val_data, _ = split_data(data)
    collate = partial(custom_collate_fn, pad_token_id=compact.eot_token, device="cpu", allowed_max_length=96)
    torch.manual_seed(123)
    train_loader = DataLoader(
        InstructionDataset(train_data[:24], compact), batch_size=4, collate_fn=collate, shuffle=True, drop_last=True
    )
    val_loader = DataLoader(InstructionDataset(val_data, compact), batch_size=4, collate_fn=collate)
    model = _tiny_model(compact)
    with torch.no_grad():
        initial = calc_loss_loader(train_loader, model, "cpu")
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=2, eval_freq=3, eval_iter=2,
        start_context=format_input(val_data[0]), tokenizer=compact,
    )
    return initial, train_losses, val_losses, tokens_seen, len(compact), model


def test_finetuning_records_an_evaluation_every_eval_freq_steps(finetuning_run):
    _, train_losses, val_losses, tokens_seen, _, _ = finetuning_run
    # 2 epochs x 6 batches = 12 steps, evaluated after steps 0, 3, 6, 9
    assert (len(train_losses), len(val_losses), len(tokens_seen)) == (4, 4, 4)


def test_finetuning_training_loss_falls(finetuning_run):
    _, train_losses, _, _, _, _ = finetuning_run
    assert train_losses[-1] < train_losses[0] - 1.5


def test_finetuning_validation_loss_falls(finetuning_run):
    _, _, val_losses, _, _, _ = finetuning_run
    assert val_losses[-1] < val_losses[0] - 1.0


def test_untrained_loss_is_near_log_vocab_size(finetuning_run):
    # An untrained model is close to guessing uniformly among the vocabulary's tokens.
    initial, _, _, _, vocab_size, _ = finetuning_run
    assert abs(initial - math.log(vocab_size)) < 0.5


def test_offline_evaluation_of_the_test_split_is_deterministic(finetuning_run, compact, data):
    *_, model = finetuning_run
    _, _, test_data = split_data(data)

    def scores():
        responses = generate_model_responses(
            model, test_data, compact, "cpu", max_new_tokens=12, eos_id=compact.eot_token
        )
        return evaluate_responses(responses)

    first = scores()
    assert first["count"] == 10
    assert 0.0 <= first["f1"] <= 100.0
    assert scores() == first


# --- exact match and token F1 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The capital of France is Paris.", "capital of france is paris"),
        ("  the   Capital, of FRANCE; is paris!! ", "capital of france is paris"),
        ("An apple a day", "apple day"),
        ("'Dance' can be classified as a verb.", "dance can be classified as verb"),
        ("Theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_punctuation_and_articles():
    assert exact_match_score("the Mouse was chased by the cat", "The mouse was chased by a cat.") == 1.0


def test_exact_match_of_different_answers_is_zero():
    assert exact_match_score("The cat chased the mouse.", "The mouse was chased by the cat.") == 0.0


def test_f1_hand_computed():
    # prediction "capital is ottawa" (3 words), reference "capital of canada is ottawa" (5 words):
    # 3 shared, precision 1, recall 3/5, F1 = 2 * 0.6 / 1.6 = 0.75
    assert f1_score("The capital is Ottawa.", "The capital of Canada is Ottawa.") == pytest.approx(0.75)


def test_f1_counts_repeated_words_at_most_as_often_as_shared():
    # prediction "x x y", reference "x y y": x is shared once, y once -> precision = recall = F1 = 2/3
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)


def test_f1_without_shared_words_is_zero():
    assert f1_score("blue", "red") == 0.0


def test_f1_of_two_empty_answers_is_one():
    assert f1_score("The.", "a") == 1.0


def test_f1_of_an_empty_answer_against_a_real_one_is_zero():
    assert f1_score("", "red") == 0.0


def test_evaluate_responses_in_percent():
    entries = [
        {"output": "The capital of Canada is Ottawa.", "model_response": "the capital of canada is ottawa"},
        {"output": "The capital of Canada is Ottawa.", "model_response": "The capital is Ottawa."},
    ]
    scores = evaluate_responses(entries)
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 87.5, "count": 2})


def test_evaluate_responses_other_key():
    entries = [{"output": "Red.", "answer": "red"}]
    assert evaluate_responses(entries, json_key="answer")["exact_match"] == 100.0


def test_evaluate_responses_of_nothing():
    assert evaluate_responses([]) == {"exact_match": 0.0, "f1": 0.0, "count": 0}


# --- judge scoring ----------------------------------------------------------------------------------------


def test_judge_prompt_is_the_books():
    entry = {**ENTRY_WITHOUT_INPUT, "model_response": "Blue."}
    expected = (
        f"Given the input `{format_input(entry)}` and correct output `Red.`, score the model response `Blue.` "
        "on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
    )
    assert judge_prompt(entry, "model_response") == expected


def test_generate_model_scores_with_a_fake_judge(capsys):
    entries = [{**ENTRY_WITHOUT_INPUT, "model_response": answer} for answer in ("Red.", "Blue.", "Green.")]
    replies = iter(["90", "not a number", " 15\n"])
    calls = []

    def judge(prompt, model):
        calls.append((prompt, model))
        return next(replies)

    scores = generate_model_scores(entries, "model_response", model="judge-model", judge=judge)
    assert scores == [90, 15]  # the unparsable reply is skipped
    assert [model for _, model in calls] == ["judge-model"] * 3
    assert "`Blue.`" in calls[1][0]
    assert "Could not convert score: not a number" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_query_model_without_a_server_says_so():
    url = f"http://127.0.0.1:{_free_port()}/api/chat"  # nothing listens there
    with pytest.raises(OllamaNotRunningError, match="ollama serve"):
        query_model("Hello?", url=url, timeout=5)


def test_query_model_sends_the_books_request_and_joins_the_streamed_answer():
    received = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received["path"] = self.path
            received["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()
            for piece in ("Llamas eat ", "grass.", None):
                line = {"done": True} if piece is None else {"message": {"role": "assistant", "content": piece}}
                self.wfile.write(json.dumps(line).encode() + b"\n")

        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        answer = query_model("What do llamas eat?", model="llama3", url=f"http://127.0.0.1:{server.server_port}/api/chat")
    finally:
        server.shutdown()
        server.server_close()
    assert answer == "Llamas eat grass."
    assert received["path"] == "/api/chat"
    assert received["body"] == {
        "model": "llama3",
        "messages": [{"role": "user", "content": "What do llamas eat?"}],
        "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},
    }
