"""Mutants and variants of the chapter 7 bonus: Direct Preference Optimization (DPO)."""

from tests.submissions.catalog.base import Variant, mutant, rewrite

DPO = "ch07_dpo"
# The batch, loader, evaluation and training tests run on correct stand-ins of their parts: a bug costs only the
# tests of the function it is in.

COLLATE_PADDED_SEPARATELY = '''def custom_collate_fn(batch, pad_token_id=50256, allowed_max_length=None,
                      mask_prompt_tokens=True, device="cpu"):
    batch_data = {"prompt": [], "chosen": [], "rejected": [], "rejected_mask": [], "chosen_mask": []}
    for item in batch:
        batch_data["prompt"].append(torch.tensor(item["prompt"]))
    for key in ["chosen", "rejected"]:
        max_length = max(len(item[key]) + 1 for item in batch)
        for item in batch:
            sequence = item[key]
            padded = sequence + [pad_token_id] * (max_length - len(sequence))
            mask = torch.ones(len(padded)).bool()
            mask[len(sequence):] = False
            if mask_prompt_tokens:
                mask[:len(item["prompt"]) + 2] = False
            batch_data[key].append(torch.tensor(padded))
            batch_data[f"{key}_mask"].append(mask)
    for key in ["chosen", "rejected", "chosen_mask", "rejected_mask"]:
        tensor_stack = torch.stack(batch_data[key])
        if allowed_max_length is not None:
            tensor_stack = tensor_stack[:, :allowed_max_length]
        batch_data[key] = tensor_stack.to(device)
    return batch_data
'''

MUTANTS = [
    mutant("chosen_and_rejected_swapped", DPO, "preference_dataset",
           [("\"chosen\": tokenizer.encode(chosen_full_text)", "\"chosen\": tokenizer.encode(rejected_full_text)"),
            ("\"rejected\": tokenizer.encode(rejected_full_text)", "\"rejected\": tokenizer.encode(chosen_full_text)")],
           {"test_preference_dataset"}, says="chosen and rejected swapped"),
    rewrite("collate_padded_separately", DPO, {"custom_collate_fn": COLLATE_PADDED_SEPARATELY},
            {"test_collate_token_ids", "test_collate_masks", "test_collate_without_prompt_masking",
             "test_collate_truncation_and_device"}, says="two different lengths"),
    # The masks select the prompt as well: the loss would compare the prompt's likelihood too.
    mutant("mask_includes_the_prompt", DPO, "custom_collate_fn",
           [("                mask[:prompt.shape[0] + 2] = False", "                pass")],
           {"test_collate_masks"}, says="masks that keep the prompt"),
    mutant("logprobs_not_shifted", DPO, "compute_logprobs",
           [("labels = labels[:, 1:].clone()", "labels = labels.clone()"),
            ("logits = logits[:, :-1, :]", "logits = logits"),
            ("mask = selection_mask[:, 1:].clone()", "mask = selection_mask.clone()")],
           {"test_compute_logprobs"}),
    # Numerically unstable: the log of a softmax underflows to -inf on large logits.
    mutant("logprobs_log_of_softmax", DPO, "compute_logprobs",
           [("log_probs = F.log_softmax(logits, dim=-1)", "log_probs = torch.log(F.softmax(logits, dim=-1))")],
           {"test_compute_logprobs"}, says="underflows to -inf"),
    # Numerically unstable: the log of a sigmoid underflows to -inf when the log-ratios are far apart.
    mutant("loss_log_of_sigmoid", DPO, "compute_dpo_loss",
           [("losses = -F.logsigmoid(beta * logits)", "losses = -torch.log(torch.sigmoid(beta * logits))")],
           {"test_dpo_loss"}, says="underflows to -inf"),
    mutant("loss_sign_flipped", DPO, "compute_dpo_loss",
           [("losses = -F.logsigmoid(beta * logits)", "losses = -F.logsigmoid(-beta * logits)")],
           {"test_dpo_loss", "test_dpo_loss_properties"}),
    mutant("rewards_times_beta", DPO, "compute_dpo_loss",
           [("chosen_rewards = (model_chosen_logprobs - reference_chosen_logprobs).detach()",
             "chosen_rewards = beta * (model_chosen_logprobs - reference_chosen_logprobs).detach()"),
            ("rejected_rewards = (model_rejected_logprobs - reference_rejected_logprobs).detach()",
             "rejected_rewards = beta * (model_rejected_logprobs - reference_rejected_logprobs).detach()")],
           {"test_dpo_rewards"}, says="multiplied by beta"),
    # The rewards keep their graph: tracked values that hold every step's activations.
    mutant("rewards_keep_their_graph", DPO, "compute_dpo_loss",
           [("chosen_rewards = (model_chosen_logprobs - reference_chosen_logprobs).detach()",
             "chosen_rewards = model_chosen_logprobs - reference_chosen_logprobs"),
            ("rejected_rewards = (model_rejected_logprobs - reference_rejected_logprobs).detach()",
             "rejected_rewards = model_rejected_logprobs - reference_rejected_logprobs")],
           {"test_dpo_rewards"}, says="attached to the graph"),
    # The chosen sequences' masks not passed: their log-probabilities average over the prompt and the padding too.
    mutant("batch_loss_without_chosen_masks", DPO, "compute_dpo_loss_batch",
           [("policy_model(batch[\"chosen\"]), labels=batch[\"chosen\"], selection_mask=batch[\"chosen_mask\"])",
             "policy_model(batch[\"chosen\"]), labels=batch[\"chosen\"])"),
            ("reference_model(batch[\"chosen\"]), labels=batch[\"chosen\"], selection_mask=batch[\"chosen_mask\"])",
             "reference_model(batch[\"chosen\"]), labels=batch[\"chosen\"])")],
           {"test_dpo_loss_batch", "test_dpo_batch_gradients"}),
    # The reference model is not frozen: its log-probabilities keep their graph and it gets gradients.
    mutant("reference_not_frozen", DPO, "compute_dpo_loss_batch",
           [("    with torch.no_grad():  # the reference model is frozen\n", "    if True:\n")],
           {"test_dpo_batch_gradients"}, says="no gradient reaches it"),
    mutant("loader_sums_instead_of_averaging", DPO, "compute_dpo_loss_loader",
           [("return total_loss / num_batches, total_chosen_rewards / num_batches, total_rejected_rewards / "
             "num_batches", "return total_loss, total_chosen_rewards, total_rejected_rewards")],
           {"test_dpo_loss_loader"}, says="sums instead of averages"),
    # Tensors where the book's .item() gives Python floats: in training, the totals keep every batch's graph.
    mutant("loader_returns_tensors", DPO, "compute_dpo_loss_loader",
           [("total_loss += loss.item()", "total_loss += loss"),
            ("total_chosen_rewards += chosen_rewards.item()", "total_chosen_rewards += chosen_rewards"),
            ("total_rejected_rewards += rejected_rewards.item()", "total_rejected_rewards += rejected_rewards")],
           {"test_dpo_loss_loader"}, says="three Python floats"),
    mutant("evaluation_with_dropout", DPO, "evaluate_dpo_loss_loader",
           [("    policy_model.eval()  # no dropout while measuring\n", "")],
           {"test_evaluate_dpo_loss_loader"}, says="dropout was on"),
    mutant("training_without_zero_grad", DPO, "train_model_dpo_simple",
           [("            optimizer.zero_grad()\n", "")],
           {"test_train_model_dpo_simple"}, says="without resetting the gradients"),
    # A loop that never switches the policy to training mode: handed a model just evaluated, it trains without dropout.
    mutant("training_never_calls_train", DPO, "train_model_dpo_simple",
           [("        policy_model.train()\n", "")],
           {"test_train_model_dpo_simple"}, says="without switching it to training mode"),
]


# -- correct variants -----------------------------------------------------------------------------------------

# The masks built from positions, all at once, and the log-probabilities with cross_entropy.
COLLATE_VECTORIZED = '''def custom_collate_fn(batch, pad_token_id=50256, allowed_max_length=None,
                      mask_prompt_tokens=True, device="cpu"):
    width = max(len(item[key]) for item in batch for key in ("chosen", "rejected")) + 1
    result = {"prompt": [torch.tensor(item["prompt"]) for item in batch]}
    positions = torch.arange(width)
    for key in ("chosen", "rejected"):
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        masks = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, item in enumerate(batch):
            ids[row, :len(item[key])] = torch.tensor(item[key], dtype=torch.long)
            start = len(item["prompt"]) + 2 if mask_prompt_tokens else 0
            masks[row] = (positions >= start) & (positions < len(item[key]))
        result[key] = ids[:, :allowed_max_length].to(device)
        result[key + "_mask"] = masks[:, :allowed_max_length].to(device)
    return result
'''

LOGPROBS_CROSS_ENTROPY = '''def compute_logprobs(logits, labels, selection_mask=None):
    predicted, targets = logits[:, :-1], labels[:, 1:]
    token_logprobs = -F.cross_entropy(predicted.transpose(1, 2), targets, reduction="none")
    if selection_mask is None:
        return token_logprobs.mean(dim=-1)
    weights = selection_mask[:, 1:].to(token_logprobs.dtype)
    return (token_logprobs * weights).sum(dim=-1) / weights.sum(dim=-1)
'''

DPO_LOSS_SOFTPLUS = '''def compute_dpo_loss(model_chosen_logprobs, model_rejected_logprobs, reference_chosen_logprobs,
                     reference_rejected_logprobs, beta=0.1):
    margin = ((model_chosen_logprobs - reference_chosen_logprobs)
              - (model_rejected_logprobs - reference_rejected_logprobs))
    loss = F.softplus(-beta * margin).mean()
    with torch.no_grad():
        chosen = (model_chosen_logprobs - reference_chosen_logprobs).mean()
        rejected = (model_rejected_logprobs - reference_rejected_logprobs).mean()
    return loss, chosen, rejected
'''

LOADER_ISLICE = '''def compute_dpo_loss_loader(data_loader, policy_model, reference_model, beta, num_batches=None):
    import itertools
    count = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    sums = [0.0, 0.0, 0.0]
    for batch in itertools.islice(data_loader, count):
        values = compute_dpo_loss_batch(batch, policy_model, reference_model, beta)
        sums = [total + float(value) for total, value in zip(sums, values)]
    return tuple(total / count for total in sums)
'''

# The book's own loop, sampling from the global `model` (the grader makes it name the policy).
TRAIN_BOOK_GLOBAL_MODEL = '''def train_model_dpo_simple(policy_model, reference_model, train_loader, val_loader,
                           optimizer, num_epochs, beta, eval_freq, eval_iter, start_context, tokenizer):
    tracking = {"train_losses": [], "train_chosen_rewards": [], "train_rejected_rewards": [], "val_losses": [],
                "val_chosen_rewards": [], "val_rejected_rewards": [], "tokens_seen": []}
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        policy_model.train()
        for batch_idx, batch in enumerate(train_loader):
            optimizer.zero_grad()
            loss, chosen_rewards, rejected_rewards = compute_dpo_loss_batch(
                batch=batch, policy_model=policy_model, reference_model=reference_model, beta=beta)
            loss.backward()
            optimizer.step()
            tokens_seen += batch["chosen"].numel()
            global_step += 1
            if global_step % eval_freq == 0:
                res = evaluate_dpo_loss_loader(policy_model, reference_model, train_loader, val_loader, beta,
                                               eval_iter)
                for key, name in (("train_losses", "train_loss"), ("train_chosen_rewards", "train_chosen_reward"),
                                  ("train_rejected_rewards", "train_rejected_reward"), ("val_losses", "val_loss"),
                                  ("val_chosen_rewards", "val_chosen_reward"),
                                  ("val_rejected_rewards", "val_rejected_reward")):
                    tracking[key].append(res[name])
                tracking["tokens_seen"].append(tokens_seen)
        generate_and_print_sample(model=model, tokenizer=tokenizer, device=loss.device, start_context=start_context)
    return tracking
'''

VARIANTS = [
    Variant("vectorized_masks_and_cross_entropy", DPO, {"custom_collate_fn": COLLATE_VECTORIZED,
                                                        "compute_logprobs": LOGPROBS_CROSS_ENTROPY}),
    Variant("softplus_islice_and_book_loop", DPO, {"compute_dpo_loss": DPO_LOSS_SOFTPLUS,
                                                   "compute_dpo_loss_loader": LOADER_ISLICE,
                                                   "train_model_dpo_simple": TRAIN_BOOK_GLOBAL_MODEL}),
]
