"""Mutants and variants of chapter 7: finetuning to follow instructions."""

from tests.submissions.catalog.base import Variant, mutant, rewrite

CH07 = "ch07_instruction"
# The composites (the dataset, generation, the scores, the finetuning run) run on correct stand-ins of their parts:
# a bug costs only the tests of the function it is in, and of the finetuning run (PARTS_FIT: the student's dataset
# and collate function together) for a bug in the collate function.

F1_WITH_SETS = '''def f1_score(prediction, ground_truth):
    prediction_tokens = set(normalize_answer(prediction).split())
    ground_truth_tokens = set(normalize_answer(ground_truth).split())
    if not prediction_tokens or not ground_truth_tokens:
        return float(prediction_tokens == ground_truth_tokens)
    num_same = len(prediction_tokens & ground_truth_tokens)
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)
'''

MUTANTS = [
    # The "### Input:" section even when the entry has no input.
    mutant("format_input_always_with_input", CH07, "format_input",
           [("if entry[\"input\"] else \"\"", "")],
           {"test_format_input"}),
    # The answer appended straight after the prompt, without the response header.
    mutant("dataset_without_response_header", CH07, "instruction_dataset",
           [("response_text = f\"\\n\\n### Response:\\n{entry['output']}\"", "response_text = entry['output']")],
           {"test_instruction_dataset", "test_finetuning_run"}, says="without the response header"),
    mutant("split_val_and_test_swapped", CH07, "split_data",
           [("return train_data, val_data, test_data", "return train_data, test_data, val_data")],
           {"test_split_data"}),
    # The extra end-of-text token kept in the inputs: one column too many.
    mutant("draft_1_keeps_the_extra_token", CH07, "custom_collate_draft_1",
           [("inputs_lst.append(torch.tensor(padded[:-1]))", "inputs_lst.append(torch.tensor(padded))")],
           {"test_collate_draft_1"}),
    mutant("draft_2_targets_not_shifted", CH07, "custom_collate_draft_2",
           [("targets_lst.append(torch.tensor(padded[1:]))", "targets_lst.append(torch.tensor(padded[:-1]))")],
           {"test_collate_draft_2"}, says="targets = padded[1:]"),
    # -100 on every padding target, the first end-of-text token included: the model never learns to stop.
    mutant("every_padding_target_ignored", CH07, "custom_collate_fn",
           [("targets[indices[1:]] = ignore_index", "targets[indices] = ignore_index")],
           {"test_collate_fn_targets", "test_finetuning_run"}, says="the first end-of-text token included"),
    mutant("allowed_max_length_ignored", CH07, "custom_collate_fn",
           [("            inputs = inputs[:allowed_max_length]\n            targets = targets[:allowed_max_length]\n",
             "            pass\n")],
           {"test_collate_fn_truncation", "test_finetuning_run"}),
    # Appending the pad token to the dataset's own lists: they grow at every call.
    mutant("collate_changes_the_items", CH07, "custom_collate_fn",
           [("new_item = item.copy() + [pad_token_id]", "new_item = item\n        new_item += [pad_token_id]")],
           {"test_collate_fn_device", "test_finetuning_run"}, says="work on a copy of each item"),
    mutant("collate_left_on_the_cpu", CH07, "custom_collate_fn",
           [("return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)",
             "return torch.stack(inputs_lst), torch.stack(targets_lst)")],
           {"test_collate_fn_device"}),
    mutant("response_not_stripped", CH07, "extract_response",
           [(".replace(\"### Response:\", \"\").strip()", ".replace(\"### Response:\", \"\")")],
           {"test_extract_response"}, says="strip the whitespace"),
    # Generation that never stops at the end-of-text token.
    mutant("generation_ignores_eos_id", CH07, "generate_model_responses",
           [("            eos_id=eos_id,\n", "")],
           {"test_generate_model_responses"}),
    mutant("articles_kept", CH07, "normalize_answer",
           [("text = re.sub(r\"\\b(a|an|the)\\b\", \" \", text)", "pass")],
           {"test_normalize_answer"}),
    # The raw strings compared: case, punctuation and articles count.
    mutant("exact_match_not_normalized", CH07, "exact_match_score",
           [("return float(normalize_answer(prediction) == normalize_answer(ground_truth))",
             "return float(prediction == ground_truth)")],
           {"test_exact_match_score"}),
    rewrite("f1_on_sets_of_words", CH07, {"f1_score": F1_WITH_SETS},
            {"test_f1_score"}, says="exactly what sets of words give"),
    mutant("scores_not_in_percent", CH07, "evaluate_responses",
           [("\"exact_match\": 100.0 * em / len(data), \"f1\": 100.0 * f1 / len(data)",
             "\"exact_match\": em / len(data), \"f1\": f1 / len(data)")],
           {"test_evaluate_responses"}),
]


# -- correct variants -----------------------------------------------------------------------------------------

FORMAT_JOIN = '''def format_input(entry):
    parts = ["Below is an instruction that describes a task. Write a response that appropriately completes the "
             "request.", "### Instruction:\\n" + entry["instruction"]]
    if entry["input"]:
        parts.append("### Input:\\n" + entry["input"])
    return "\\n\\n".join(parts)
'''

SPLIT_INDICES = '''def split_data(data, train_frac=0.85, test_frac=0.1):
    n_train = int(len(data) * train_frac)
    n_test = int(len(data) * test_frac)
    return data[:n_train], data[n_train + n_test:], data[n_train:n_train + n_test]
'''

# Masks by position: the first padding position of each row (the end-of-text token) is kept.
COLLATE_BY_POSITION = '''def custom_collate_fn(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None,
                      device="cpu"):
    width = max(len(item) for item in batch) + 1
    inputs = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    targets = torch.full((len(batch), width), ignore_index, dtype=torch.long)
    for row, item in enumerate(batch):
        inputs[row, :len(item)] = torch.tensor(item, dtype=torch.long)
        targets[row, :len(item) - 1] = torch.tensor(item[1:], dtype=torch.long)
        targets[row, len(item) - 1] = pad_token_id
    inputs, targets = inputs[:, :-1], targets[:, :-1]
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs.to(device), targets.to(device)
'''

EXTRACT_PARTITION = '''def extract_response(response_text, input_text):
    rest = response_text[len(input_text):]
    return "".join(rest.split("### Response:")).strip()
'''

F1_COUNTING = '''def f1_score(prediction, ground_truth):
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(ground_truth).split()
    if len(predicted) == 0 or len(expected) == 0:
        return 1.0 if predicted == expected else 0.0
    remaining = list(expected)
    shared = 0
    for word in predicted:
        if word in remaining:
            remaining.remove(word)
            shared += 1
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)
'''

NORMALIZE_TRANSLATE = '''def normalize_answer(text):
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    words = [word for word in text.split() if word not in ("a", "an", "the")]
    return " ".join(words)
'''

VARIANTS = [
    Variant("join_and_position_masks", CH07, {"format_input": FORMAT_JOIN, "split_data": SPLIT_INDICES,
                                              "custom_collate_fn": COLLATE_BY_POSITION}),
    Variant("counting_words", CH07, {"extract_response": EXTRACT_PARTITION, "f1_score": F1_COUNTING,
                                     "normalize_answer": NORMALIZE_TRANSLATE}),
]
