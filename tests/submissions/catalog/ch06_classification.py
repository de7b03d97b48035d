"""Mutants and variants of chapter 6: finetuning for classification."""

from tests.submissions.catalog.base import Variant, mutant, rewrite

CH06 = "ch06_classification"

# An empty message through tensors: torch.tensor([]) is a float tensor, and so is its concatenation with the padding.
CLASSIFY_WITH_TORCH_CAT = '''def classify_review(text, model, tokenizer, device, max_length=None, pad_token_id=50256):
    model.eval()
    max_length = model.pos_emb.weight.shape[0] if max_length is None else max_length
    ids = torch.tensor(tokenizer.encode(text))[:max_length]
    ids = torch.cat([ids, torch.full((max_length - len(ids),), pad_token_id)])
    with torch.no_grad():
        logits = model(ids.unsqueeze(0).to(device))[:, -1, :]
    return "spam" if logits.argmax(dim=-1).item() == 1 else "not spam"
'''

MUTANTS = [
    # -- the data -----------------------------------------------------------------------------------------------
    mutant("balanced_spam_first", CH06, "create_balanced_dataset",
           [("return pd.concat([ham_subset, spam])", "return pd.concat([spam, ham_subset])")],
           {"test_create_balanced_dataset"}, says="the right rows in the wrong order"),
    mutant("balanced_sample_not_seeded", CH06, "create_balanced_dataset",
           [(".sample(len(spam), random_state=123)", ".sample(len(spam))")],
           {"test_create_balanced_dataset"}, says="what a sample drawn without a seed gives"),
    mutant("split_index_not_reset", CH06, "random_split",
           [("df.sample(frac=1, random_state=123).reset_index(drop=True)", "df.sample(frac=1, random_state=123)")],
           {"test_random_split"}, says="a fresh index"),
    mutant("split_validation_end_from_the_sum", CH06, "random_split",
           [("validation_end = train_end + int(len(shuffled) * validation_frac)",
             "validation_end = int(len(shuffled) * (train_frac + validation_frac))")],
           {"test_random_split"}, says="int(n * (train_frac + validation_frac))"),
    mutant("dataset_pads_at_the_start", CH06, "spam_dataset",
           [("[ids + [pad_token_id] * (self.max_length - len(ids)) for ids in encoded]",
             "[[pad_token_id] * (self.max_length - len(ids)) + ids for ids in encoded]")],
           {"test_spam_dataset", "test_spam_dataset_max_length"}, says="padding at the start"),
    mutant("dataset_not_truncated", CH06, "spam_dataset",
           [("encoded = [ids[:max_length] for ids in encoded]", "pass")],
           {"test_spam_dataset_max_length"}, says="without truncating"),
    mutant("dataset_pads_with_50256_always", CH06, "spam_dataset",
           [("ids + [pad_token_id] * (self.max_length", "ids + [50256] * (self.max_length")],
           {"test_spam_dataset_max_length"}, says="whatever pad_token_id says"),
    mutant("dataset_label_as_float", CH06, "spam_dataset",
           [("torch.tensor(label, dtype=torch.long))", "torch.tensor(label, dtype=torch.float))")],
           {"test_spam_dataset", "test_spam_dataset_max_length"}, says="dtype"),
    # -- the model ----------------------------------------------------------------------------------------------
    mutant("head_without_bias", CH06, "prepare_model_for_classification",
           [("nn.Linear(in_features=emb_dim, out_features=num_classes)",
             "nn.Linear(in_features=emb_dim, out_features=num_classes, bias=False)")],
           {"test_classification_head", "test_freezing"}, says="has no bias"),
    mutant("head_frozen", CH06, "prepare_model_for_classification",
           [("    model.requires_grad_(False)  # every parameter frozen\n", ""),
            ("model.out_head = nn.Linear(in_features=emb_dim, out_features=num_classes)\n",
             "model.out_head = nn.Linear(in_features=emb_dim, out_features=num_classes)\n"
             "    model.requires_grad_(False)\n")],
           {"test_freezing"}, says="the new head is frozen"),
    mutant("nothing_frozen", CH06, "prepare_model_for_classification",
           [("    model.requires_grad_(False)  # every parameter frozen\n", "")],
           {"test_freezing"}, says="every parameter is still trainable"),
    mutant("first_block_unfrozen", CH06, "prepare_model_for_classification",
           [("model.trf_blocks[-1].requires_grad_(True)", "model.trf_blocks[0].requires_grad_(True)")],
           {"test_freezing"}, says="the LAST transformer block"),
    # -- loss and accuracy --------------------------------------------------------------------------------------
    mutant("loss_from_the_first_token", CH06, "calc_loss_batch",
           [("logits = model(input_batch)[:, -1, :]", "logits = model(input_batch)[:, 0, :]")],
           {"test_calc_loss_batch"}, says="exactly what the logits of the first token"),
    mutant("loss_logits_averaged_over_tokens", CH06, "calc_loss_batch",
           [("logits = model(input_batch)[:, -1, :]", "logits = model(input_batch).mean(dim=1)")],
           {"test_calc_loss_batch"}, says="logits averaged over the positions"),
    mutant("loss_loader_ignores_num_batches", CH06, "calc_loss_loader",
           [("        if i >= num_batches:\n            break\n", "")],
           {"test_calc_loss_loader"}, says="stop after the first num_batches batches"),
    mutant("loss_batch_not_moved_to_device", CH06, "calc_loss_batch",
           [("    input_batch, target_batch = input_batch.to(device), target_batch.to(device)  # (b, n), (b,)\n", "")],
           {"test_calc_loss_batch"}, says="never went through .to(device)"),
    mutant("accuracy_without_eval_mode", CH06, "calc_accuracy_loader",
           [("    model.eval()\n", "")],
           {"test_calc_accuracy_loader"}, says="evaluation mode (its eval method) before the first batch"),
    mutant("accuracy_batch_not_moved_to_device", CH06, "calc_accuracy_loader",
           [("input_batch, target_batch = input_batch.to(device), target_batch.to(device)  # (b, n), (b,)",
             "pass")],
           {"test_calc_accuracy_loader"}, says="never went through .to(device)"),
    mutant("accuracy_mean_of_batch_accuracies", CH06, "calc_accuracy_loader",
           [("    correct, seen = 0, 0\n", "    correct, seen = 0.0, 0\n"),
            ("correct += (predicted == target_batch).sum().item()",
             "correct += (predicted == target_batch).float().mean().item()"),
            ("seen += target_batch.shape[0]", "seen += 1")],
           {"test_calc_accuracy_loader"}, says="averaging the accuracies of the batches"),
    mutant("accuracy_from_the_first_token", CH06, "calc_accuracy_loader",
           [("logits = model(input_batch)[:, -1, :]", "logits = model(input_batch)[:, 0, :]")],
           {"test_calc_accuracy_loader"}, says="predicting from the first token"),
    mutant("evaluate_leaves_eval_mode", CH06, "evaluate_model",
           [("    model.train()\n    return train_loss, val_loss", "    return train_loss, val_loss")],
           {"test_evaluate_model"}, says="left in eval mode"),
    # -- training -----------------------------------------------------------------------------------------------
    mutant("train_without_zero_grad", CH06, "train_classifier_simple",
           [("            optimizer.zero_grad()  # forget the previous step's gradients\n", "")],
           {"test_train_classifier_simple"}, says="without resetting the gradients"),
    mutant("train_mode_set_once", CH06, "train_classifier_simple",
           [("    for epoch in range(num_epochs):\n        model.train()  # dropout on (calc_accuracy_loader below "
             "switches it off)\n",
             "    model.train()\n    for epoch in range(num_epochs):\n")],
           {"test_train_classifier_simple"}, says="switching to training mode once"),
    mutant("train_never_sets_train_mode", CH06, "train_classifier_simple",
           [("        model.train()  # dropout on (calc_accuracy_loader below switches it off)\n", "")],
           {"test_train_classifier_simple"}, says="never switching the model to training mode"),
    mutant("train_returns_tensor_accuracies", CH06, "train_classifier_simple",
           [("train_accs.append(train_accuracy)", "train_accs.append(torch.tensor(train_accuracy))"),
            ("val_accs.append(val_accuracy)", "val_accs.append(torch.tensor(val_accuracy))")],
           {"test_train_classifier_simple"}, says="not a Python float"),
    mutant("train_counts_tokens", CH06, "train_classifier_simple",
           [("examples_seen += input_batch.shape[0]", "examples_seen += input_batch.numel()")],
           {"test_train_classifier_simple"}, says="counting tokens instead of examples"),
    mutant("train_accuracy_on_every_batch", CH06, "train_classifier_simple",
           [("calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter)",
             "calc_accuracy_loader(train_loader, model, device)"),
            ("calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter)",
             "calc_accuracy_loader(val_loader, model, device)")],
           {"test_train_classifier_simple"}, says="measuring the accuracies on every batch"),
    # -- using the classifier -----------------------------------------------------------------------------------
    mutant("classify_without_padding", CH06, "classify_review",
           [("        input_ids = input_ids + [pad_token_id] * (max_length - len(input_ids))\n", "")],
           {"test_classify_review"}, says="exactly what no padding gives"),
    mutant("classify_labels_swapped", CH06, "classify_review",
           [('return "spam" if logits.argmax(dim=-1).item() == 1 else "not spam"',
             'return "spam" if logits.argmax(dim=-1).item() == 0 else "not spam"')],
           {"test_classify_review"}, says='class 1 is "spam"'),
    mutant("classify_refuses_a_full_context", CH06, "classify_review",
           [("if max_length is not None and max_length > context_length:",
             "if max_length is not None and max_length >= context_length:")],
           {"test_classify_review"}, says="fills the context exactly"),
    rewrite("classify_empty_message_as_floats", CH06, {"classify_review": CLASSIFY_WITH_TORCH_CAT},
            {"test_classify_review"}, says="a tensor made from an empty list is a float tensor"),
    mutant("classify_without_eval_mode", CH06, "classify_review",
           [("    model.eval()\n    context_length", "    context_length")],
           {"test_classify_review"}, says="evaluation mode (its eval method) first"),
]


# -- correct variants -----------------------------------------------------------------------------------------

# The book's own edge-case behaviour in classify_review (its notebook): max_length must be given and fit.
CLASSIFY_ASSERTING = '''def classify_review(text, model, tokenizer, device, max_length=None, pad_token_id=50256):
    model.eval()
    ids = tokenizer.encode(text)
    limit = model.pos_emb.weight.shape[0]
    assert max_length is not None and max_length <= limit, "max_length must be given and fit the context"
    ids = ids[:max_length]
    batch = torch.full((1, max_length), pad_token_id, dtype=torch.long, device=device)
    batch[0, :len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
    with torch.no_grad():
        probabilities = torch.softmax(model(batch)[0, -1], dim=-1)
    return ["not spam", "spam"][int(probabilities.argmax())]
'''

DATASET_TENSORS = '''class SpamDataset(Dataset):
    def __init__(self, csv_file, tokenizer, max_length=None, pad_token_id=50256):
        self.data = pd.read_csv(csv_file)
        encoded = [torch.tensor(tokenizer.encode(text), dtype=torch.long) for text in self.data["Text"]]
        self.max_length = max(len(t) for t in encoded) if max_length is None else max_length
        self.encoded_texts = torch.full((len(encoded), self.max_length), pad_token_id, dtype=torch.long)
        for row, ids in enumerate(encoded):
            ids = ids[:self.max_length]
            self.encoded_texts[row, :len(ids)] = ids
        self.labels = torch.tensor(self.data["Label"].to_numpy(), dtype=torch.long)

    def __getitem__(self, index):
        return self.encoded_texts[index], self.labels[index]

    def __len__(self):
        return len(self.labels)
'''

BALANCED_BY_INDEX = '''def create_balanced_dataset(df):
    is_spam = df["Label"] == "spam"
    ham = df.loc[~is_spam].sample(n=int(is_spam.sum()), random_state=123)
    return pd.concat([ham, df.loc[is_spam]], axis=0)
'''

SPLIT_ILOC = '''def random_split(df, train_frac, validation_frac):
    df = df.sample(frac=1.0, random_state=123)
    df.index = range(len(df))
    n_train, n_val = int(len(df) * train_frac), int(len(df) * validation_frac)
    return df.iloc[:n_train], df.iloc[n_train:n_train + n_val], df.iloc[n_train + n_val:]
'''

PREPARE_LOOPS = '''def prepare_model_for_classification(model, num_classes=2):
    for param in model.parameters():
        param.requires_grad = False
    model.out_head = torch.nn.Linear(model.final_norm.scale.shape[0], num_classes)
    for module in (model.trf_blocks[-1], model.final_norm):
        for param in module.parameters():
            param.requires_grad = True
'''

LOSS_GATHER = '''def calc_loss_batch(input_batch, target_batch, model, device):
    logits = model(input_batch.to(device))[:, -1]
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(1, target_batch.to(device).unsqueeze(1)).mean()
'''

ACCURACY_ISLICE = '''def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    import itertools
    model.eval()
    limit = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    hits = total = 0
    with torch.no_grad():
        for inputs, labels in itertools.islice(data_loader, limit):
            predictions = model(inputs.to(device))[:, -1, :].argmax(-1)
            hits += int((predictions.cpu() == labels).sum())
            total += len(labels)
    return hits / total
'''

TRAIN_COUNTER = '''def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                            eval_freq, eval_iter):
    history = {"train": [], "val": [], "train_acc": [], "val_acc": []}
    examples_seen = 0
    step = 0
    for epoch in range(num_epochs):
        model.train()
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            calc_loss_batch(inputs, labels, model, device).backward()
            optimizer.step()
            examples_seen += len(labels)
            if step % eval_freq == 0:
                losses = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                history["train"].append(losses[0])
                history["val"].append(losses[1])
            step += 1
        history["train_acc"].append(calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter))
        history["val_acc"].append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))
    return history["train"], history["val"], history["train_acc"], history["val_acc"], examples_seen
'''

VARIANTS = [
    Variant("book_edge_cases_and_tensor_dataset", CH06,
            {"classify_review": CLASSIFY_ASSERTING, "spam_dataset": DATASET_TENSORS,
             "create_balanced_dataset": BALANCED_BY_INDEX, "random_split": SPLIT_ILOC}),
    Variant("loops_gather_and_islice", CH06,
            {"prepare_model_for_classification": PREPARE_LOOPS, "calc_loss_batch": LOSS_GATHER,
             "calc_accuracy_loader": ACCURACY_ISLICE, "train_classifier_simple": TRAIN_COUNTER}),
]

