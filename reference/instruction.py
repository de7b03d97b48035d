"""Chapter 7: finetuning to follow instructions.

A pretrained GPT continues text; an instruction-finetuned one answers. The chapter gets there with plain
next-token training on instruction/response pairs written in one fixed prompt format:

1. :func:`format_input`: an entry ``{"instruction", "input", "output"}`` as an Alpaca-style prompt;
   :func:`split_data`: the book's positional 85% / 10% / 5% split.
2. :class:`InstructionDataset`: prompt + ``"\\n\\n### Response:\\n"`` + answer, tokenized once.
3. The collate functions, in the book's three steps: :func:`custom_collate_draft_1` pads a batch,
   :func:`custom_collate_draft_2` adds the targets (the inputs shifted by one), and
   :func:`custom_collate_fn` also hides the padding from the loss (``-100``), truncates, and moves the
   batch to the device.
4. Training is chapter 5's loop unchanged (:func:`reference.pretraining.train_model_simple`): only the
   data differ.
5. :func:`generate_model_responses` answers every entry of a split with the finetuned model, and
   :func:`extract_response` cuts the answer out of the generated text.
6. Evaluation. The book asks a larger local model (Llama 3 through Ollama) to score each answer from 0 to
   100 (:func:`generate_model_scores`, :func:`query_model`). That needs a running Ollama server, so the
   course also scores deterministically and offline: exact match and token-level F1 against the reference
   answer, with SQuAD's normalisation (:func:`normalize_answer`, :func:`exact_match_score`,
   :func:`f1_score`, :func:`evaluate_responses`). :func:`generate_model_scores` takes any ``judge``
   callable, so tests and graders pass a fake judge and never need a server.

Shapes: ``b`` is the batch size, ``n`` the longest sequence in the batch plus one (the end-of-text token
that every entry gets), ``n - 1`` the length of the input and target rows.
"""

from __future__ import annotations

import json
import re
import string
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from reference.pretraining import generate, text_to_token_ids, token_ids_to_text

__all__ = [
    "RESPONSE_HEADER",
    "format_input",
    "split_data",
    "InstructionDataset",
    "custom_collate_draft_1",
    "custom_collate_draft_2",
    "custom_collate_fn",
    "extract_response",
    "generate_model_responses",
    "normalize_answer",
    "exact_match_score",
    "f1_score",
    "evaluate_responses",
    "OLLAMA_URL",
    "OllamaNotRunningError",
    "query_model",
    "judge_prompt",
    "generate_model_scores",
]

# What separates the prompt from the answer in every training example.
RESPONSE_HEADER = "\n\n### Response:\n"


# --- the prompt format and the split ------------------------------------------------------------------------


def format_input(entry: dict) -> str:
    """An entry as an Alpaca-style prompt: a fixed preamble, the instruction, and the input if there is one.

    ``entry["input"]`` may be empty: then the ``### Input:`` section is left out altogether. The response
    section is not part of the prompt; :class:`InstructionDataset` appends it for training.
    """
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


def split_data(data: list, train_frac: float = 0.85, test_frac: float = 0.1) -> tuple[list, list, list]:
    """The book's split by position: the first 85% train, the next 10% test, the remaining 5% validation.

    No shuffling (the data file is already in random order), so the split is the same on every run.
    Returns ``(train_data, val_data, test_data)``; note that in the list, the test entries come *before*
    the validation entries. 1,100 entries give 935 / 55 / 110; the course's 100 give 85 / 5 / 10.
    """
    train_portion = int(len(data) * train_frac)
    test_portion = int(len(data) * test_frac)

    train_data = data[:train_portion]
    test_data = data[train_portion : train_portion + test_portion]
    val_data = data[train_portion + test_portion :]
    return train_data, val_data, test_data


# --- the dataset --------------------------------------------------------------------------------------------


class InstructionDataset(Dataset):
    """Every entry as one token list: prompt, response header, answer. Items have different lengths.

    ``self.data`` is the list of entries; ``self.encoded_texts[i]`` the token ids of entry i (a list of
    ints, not a tensor: the collate function pads a batch to a common length).
    """

    def __init__(self, data: list, tokenizer):
        self.data = data

        # Tokenize once, here, rather than on every epoch in __getitem__.
        self.encoded_texts = []
        for entry in data:
            instruction_plus_input = format_input(entry)
            response_text = f"{RESPONSE_HEADER}{entry['output']}"
            full_text = instruction_plus_input + response_text
            self.encoded_texts.append(tokenizer.encode(full_text))

    def __getitem__(self, index: int) -> list[int]:
        return self.encoded_texts[index]

    def __len__(self) -> int:
        return len(self.data)


# --- batching -------------------------------------------------------------------------------------------------


def custom_collate_draft_1(batch: list[list[int]], pad_token_id: int = 50256, device="cpu") -> torch.Tensor:
    """Step 1: pad every item of the batch to the longest item's length (with ``pad_token_id``).

    Returns the inputs only, (b, n - 1): each item gets one end-of-text token, everything is padded to the
    longest such item (n), and the last column is dropped again.
    """
    # One more than the longest item: every item ends with at least one end-of-text token.
    batch_max_length = max(len(item) + 1 for item in batch)

    inputs_lst = []
    for item in batch:
        new_item = item.copy()  # the dataset's lists must not grow
        new_item += [pad_token_id]  # the end-of-text token that ends the answer
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))  # n tokens
        # The extra column only matters once there are targets (draft 2): for inputs, drop it.
        inputs = torch.tensor(padded[:-1])  # (n - 1,)
        inputs_lst.append(inputs)

    inputs_tensor = torch.stack(inputs_lst).to(device)  # (b, n - 1)
    return inputs_tensor


def custom_collate_draft_2(
    batch: list[list[int]], pad_token_id: int = 50256, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: inputs and targets, the targets being the inputs shifted one position to the left.

    Target j is the token that follows input j, as in pretraining (chapter 5). Both are (b, n - 1).
    """
    batch_max_length = max(len(item) + 1 for item in batch)

    inputs_lst, targets_lst = [], []
    for item in batch:
        new_item = item.copy()
        new_item += [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))  # n tokens
        inputs = torch.tensor(padded[:-1])  # (n - 1,): all but the last token
        targets = torch.tensor(padded[1:])  # (n - 1,): all but the first token
        inputs_lst.append(inputs)
        targets_lst.append(targets)

    inputs_tensor = torch.stack(inputs_lst).to(device)  # (b, n - 1)
    targets_tensor = torch.stack(targets_lst).to(device)  # (b, n - 1)
    return inputs_tensor, targets_tensor


def custom_collate_fn(
    batch: list[list[int]],
    pad_token_id: int = 50256,
    ignore_index: int = -100,
    allowed_max_length: int | None = None,
    device="cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chapter's collate function: pad, shift, hide the padding from the loss, truncate, move.

    Args:
        batch: token id lists of different lengths (items of :class:`InstructionDataset`).
        pad_token_id: the padding token, which is also the end-of-text token (50256 for GPT-2).
        ignore_index: the target value that ``torch.nn.functional.cross_entropy`` skips (-100 is its default).
        allowed_max_length: if given, rows are cut to this many tokens (after the masking).
        device: where the two tensors are put, so that the training loop need not move them.

    Returns:
        (inputs, targets), both (b, min(n - 1, allowed_max_length)).

    In each row of the targets, the FIRST ``pad_token_id`` is kept: it is the end-of-text token after the
    answer, and the model must learn to produce it, or it would never stop. Every later ``pad_token_id``
    is padding and becomes ``ignore_index``, so padding adds nothing to the loss and a row's loss does
    not depend on how long the other rows of its batch are. The inputs keep the padding (the model needs
    a token at every position; thanks to the causal mask, padding at the end cannot affect earlier
    positions).
    """
    batch_max_length = max(len(item) + 1 for item in batch)

    inputs_lst, targets_lst = [], []
    for item in batch:
        new_item = item.copy()
        new_item += [pad_token_id]  # end of text
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))  # n tokens
        inputs = torch.tensor(padded[:-1])  # (n - 1,)
        targets = torch.tensor(padded[1:])  # (n - 1,): shifted by one

        # Positions of every pad token in the targets; keep the first, ignore the rest.
        mask = targets == pad_token_id  # (n - 1,) bool
        indices = torch.nonzero(mask).squeeze()  # 0-d if there is exactly one
        if indices.numel() > 1:
            targets[indices[1:]] = ignore_index

        # Truncation comes last, so a row that is cut keeps its targets' masking as computed on the full row.
        if allowed_max_length is not None:
            inputs = inputs[:allowed_max_length]
            targets = targets[:allowed_max_length]

        inputs_lst.append(inputs)
        targets_lst.append(targets)

    inputs_tensor = torch.stack(inputs_lst).to(device)  # (b, n - 1)
    targets_tensor = torch.stack(targets_lst).to(device)  # (b, n - 1)
    return inputs_tensor, targets_tensor


# --- responses ------------------------------------------------------------------------------------------------


def extract_response(response_text: str, input_text: str) -> str:
    """The answer alone: the generated text minus the prompt, minus the ``### Response:`` header, stripped.

    ``response_text`` is what generation returns (the prompt followed by the continuation), so the first
    ``len(input_text)`` characters are the prompt itself.
    """
    return response_text[len(input_text) :].replace("### Response:", "").strip()


def generate_model_responses(
    model: torch.nn.Module,
    data: list,
    tokenizer,
    device,
    max_new_tokens: int = 256,
    context_size: int | None = None,
    eos_id: int = 50256,
    json_key: str = "model_response",
) -> list[dict]:
    """Answer every entry with ``model`` (greedy decoding), as the book does for its test set.

    Returns new entries (copies; ``data`` is left unchanged) with the answer under ``json_key``. Generation
    stops at ``eos_id`` or after ``max_new_tokens`` tokens; ``context_size`` defaults to the model's
    context length (its position embedding's size).
    """
    if context_size is None:
        context_size = model.pos_emb.weight.shape[0]
    model.eval()

    results = []
    for entry in data:
        input_text = format_input(entry)
        token_ids = generate(
            model=model,
            idx=text_to_token_ids(input_text, tokenizer).to(device),  # (1, num_prompt_tokens)
            max_new_tokens=max_new_tokens,
            context_size=context_size,
            eos_id=eos_id,
        )  # (1, num_prompt_tokens + m)
        generated_text = token_ids_to_text(token_ids, tokenizer)
        results.append({**entry, json_key: extract_response(generated_text, input_text)})
    return results


# --- offline evaluation: exact match and token F1 ------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop ASCII punctuation, drop the articles a/an/the, squeeze spaces.

    ``"The capital of France is Paris."`` and ``"the capital of  France is paris"`` both become
    ``"capital of france is paris"``. Punctuation goes before the articles, so ``"'a'"`` loses its quotes
    and then its article.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 if the two answers are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 between the normalised answers, their whitespace-separated words counted as bags.

    precision = shared words / words in the prediction, recall = shared words / words in the reference,
    F1 = their harmonic mean; a word shared twice counts twice. If either answer is empty after
    normalisation, F1 is 1.0 when both are, else 0.0 (SQuAD 2.0's convention).
    """
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    if not prediction_tokens or not ground_truth_tokens:
        return float(prediction_tokens == ground_truth_tokens)

    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)  # the smaller count of each word
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def evaluate_responses(data: list, json_key: str = "model_response") -> dict[str, float]:
    """Mean exact match and mean token F1 of ``entry[json_key]`` against ``entry["output"]``, in percent.

    Returns ``{"exact_match": ..., "f1": ..., "count": len(data)}``; both scores lie between 0 and 100,
    as in SQuAD's evaluation script (and like the book's 0-100 judge scores). An empty list scores 0.
    """
    if not data:
        return {"exact_match": 0.0, "f1": 0.0, "count": 0}
    em = sum(exact_match_score(entry[json_key], entry["output"]) for entry in data)
    f1 = sum(f1_score(entry[json_key], entry["output"]) for entry in data)
    return {"exact_match": 100.0 * em / len(data), "f1": 100.0 * f1 / len(data), "count": len(data)}


# --- evaluation by a judge model (the book's Ollama scoring) -------------------------------------------------

OLLAMA_URL = "http://localhost:11434/api/chat"


class OllamaNotRunningError(RuntimeError):
    """No Ollama server answered at the given address."""


def query_model(prompt: str, model: str = "llama3", url: str = OLLAMA_URL, timeout: float = 30.0) -> str:
    """Ask a model served by a local Ollama (``ollama serve``) and return its whole answer.

    Sends the book's request: one user message, seed 123, temperature 0 and a 2,048-token context, so that
    the answers are as repeatable as Ollama allows. The server streams its answer as JSON lines, whose
    ``message.content`` pieces are joined.

    Raises:
        OllamaNotRunningError: nothing listens at ``url`` (start Ollama, then ``ollama pull llama3``).
        urllib.error.HTTPError: the server answered with an error (404 usually means the model is not
            pulled yet).
    """
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},  # deterministic answers
    }
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise OllamaNotRunningError(
            f"No Ollama server answered at {url} ({getattr(exc, 'reason', exc)}). Start it with `ollama serve` "
            f"(or the Ollama app) and fetch the model with `ollama pull {model}`; the offline scores "
            "(evaluate_responses) need neither."
        ) from exc

    response_data = ""
    with response:
        for raw_line in response:
            line = raw_line.decode("utf-8").strip()
            if not line:
                continue
            response_json = json.loads(line)
            if "message" in response_json:
                response_data += response_json["message"]["content"]
    return response_data


def judge_prompt(entry: dict, json_key: str) -> str:
    """The book's scoring prompt: the task, the reference answer, the answer to score, "integer only"."""
    return (
        f"Given the input `{format_input(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry[json_key]}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def generate_model_scores(
    json_data: list, json_key: str, model: str = "llama3", judge: Callable[[str, str], str] | None = None
) -> list[int]:
    """Score every entry's ``entry[json_key]`` from 0 to 100 with a judge model, as the book does.

    ``judge(prompt, model)`` returns the judge's answer as text; the default, :func:`query_model`, asks
    Ollama. An answer that is not an integer is reported and skipped, so the list may be shorter than
    ``json_data``.
    """
    if judge is None:
        judge = query_model
    scores = []
    for entry in json_data:
        score = judge(judge_prompt(entry, json_key), model)
        try:
            scores.append(int(score))
        except ValueError:
            print(f"Could not convert score: {score}")
    return scores
