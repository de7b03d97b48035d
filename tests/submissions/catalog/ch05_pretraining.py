"""Mutants and variants of chapter 5: pretraining on unlabeled data."""

from tests.submissions.catalog.base import Variant, mutant, rewrite

CH05 = "ch05_pretraining"
# The composites (calc_loss_loader, evaluate_model, generate_and_print_sample, train_model_simple) run on correct
# stand-ins of their parts: a bug costs only its own function's tests.

EOS_STEP = '''        if eos_id is not None:
            idx_next = idx_next.masked_fill(finished.unsqueeze(1), eos_id)  # rows that ended: padding
            finished = finished | (idx_next.squeeze(1) == eos_id)
            if bool(finished.all()):
                break  # every row has ended: this step is not appended

        idx = torch.cat((idx, idx_next), dim=1)  # (batch, num_tokens + 1)'''

TOP_K_STEP = '''            top_logits, _ = torch.topk(logits, top_k)  # (batch, top_k), largest first
            min_val = top_logits[:, -1:]  # (batch, 1): each row's k-th largest logit
            logits = torch.where(logits < min_val, torch.full_like(logits, -torch.inf), logits)'''

GPT2_IN_PLACE = '''def load_weights_into_gpt(gpt, params):
    # First the Conv1D weights into nn.Linear's layout, (out, in), written back into the caller's dict
    for key in list(params):
        if key.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            params[key] = params[key].T
    state = {"tok_emb.weight": params["wte.weight"], "pos_emb.weight": params["wpe.weight"],
             "final_norm.scale": params["ln_f.weight"], "final_norm.shift": params["ln_f.bias"],
             "out_head.weight": params["wte.weight"]}
    for b in range(len(gpt.trf_blocks)):
        h, t = f"h.{b}.", f"trf_blocks.{b}."
        for name, w, bias in zip(("W_query", "W_key", "W_value"), params[h + "attn.c_attn.weight"].chunk(3, dim=0),
                                 params[h + "attn.c_attn.bias"].chunk(3)):
            state[t + f"att.{name}.weight"], state[t + f"att.{name}.bias"] = w, bias
        for theirs, ours in (("attn.c_proj", "att.out_proj"), ("mlp.c_fc", "ff.layers.0"),
                             ("mlp.c_proj", "ff.layers.2")):
            state[t + ours + ".weight"] = params[h + theirs + ".weight"]
            state[t + ours + ".bias"] = params[h + theirs + ".bias"]
        for theirs, ours in (("ln_1", "norm1"), ("ln_2", "norm2")):
            state[t + ours + ".scale"] = params[h + theirs + ".weight"]
            state[t + ours + ".shift"] = params[h + theirs + ".bias"]
    gpt.load_state_dict(state, strict=False)
'''

MUTANTS = [
    mutant("ids_without_batch_dimension", CH05, "text_to_token_ids",
           [("return torch.tensor(encoded).unsqueeze(0)", "return torch.tensor(encoded)")],
           {"test_text_to_token_ids"}, says="add a batch dimension in front"),
    # tiktoken cannot decode a list of lists.
    mutant("text_without_squeeze", CH05, "token_ids_to_text",
           [("flat = token_ids.squeeze(0)", "flat = token_ids")],
           {"test_token_ids_to_text"}, says="remove the batch dimension"),
    # cross_entropy reads (batch, num_tokens, vocab) as (N, C, d): it refuses the targets.
    mutant("loss_without_flattening", CH05, "calc_loss_batch",
           [("cross_entropy(logits.flatten(0, 1), target_batch.flatten())", "cross_entropy(logits, target_batch)")],
           {"test_calc_loss_batch"}, says="flatten the batch and token dimensions"),
    mutant("loss_targets_not_shifted", CH05, "calc_loss_batch",
           [("target_batch.flatten())", "input_batch.flatten())")],
           {"test_calc_loss_batch"}, says="exactly what comparing the logits with the inputs"),
    # On a GPU, a batch left on the CPU cannot meet the model's weights; the grader's batches fail the same way on
    # a CPU (probe_kit's OnHost).
    mutant("loss_batch_not_moved", CH05, "calc_loss_batch",
           [("    input_batch, target_batch = input_batch.to(device), target_batch.to(device)\n", "")],
           {"test_calc_loss_batch"}, says="move both batches to `device`"),
    mutant("loader_returns_a_tensor", CH05, "calc_loss_loader",
           [("model, device).item()", "model, device)")],
           {"test_calc_loss_loader"}, says="is a tensor, not a Python float"),
    mutant("loader_num_batches_not_capped", CH05, "calc_loss_loader",
           [("num_batches = min(num_batches, len(data_loader))", "num_batches = num_batches")],
           {"test_calc_loss_loader"}, says="dividing by num_batches when the loader has fewer batches"),
    mutant("loader_empty_divides_by_zero", CH05, "calc_loss_loader",
           [('if len(data_loader) == 0:\n        return float("nan")  # no batches, no loss\n    if', "if")],
           {"test_calc_loss_loader"}, says="float('nan')"),
    mutant("evaluate_leaves_eval_mode", CH05, "evaluate_model",
           [("    model.train()  # training goes on after the evaluation\n", "")],
           {"test_evaluate_model"}, says="left in eval mode"),
    mutant("sample_keeps_newlines", CH05, "generate_and_print_sample",
           [('print(decoded_text.replace("\\n", " "))', "print(decoded_text)")],
           {"test_generate_and_print_sample"}, says="replace each newline"),
    mutant("train_without_zero_grad", CH05, "train_model_simple",
           [("            optimizer.zero_grad()  # forget the gradients of the previous step\n", "")],
           {"test_train_model_simple"}, says="training without resetting the gradients"),
    # The grader hands the model over in eval mode: the first steps then train without dropout.
    mutant("train_never_switches_to_training_mode", CH05, "train_model_simple",
           [("        model.train()  # dropout on\n", "")],
           {"test_train_model_simple"}, says="without switching the model to training mode"),
    mutant("train_losses_as_tensors", CH05, "train_model_simple",
           [("train_losses.append(train_loss)", "train_losses.append(torch.tensor(train_loss))")],
           {"test_train_model_simple"}, says="tensor(s) where Python floats are expected"),
    mutant("train_counts_sequences", CH05, "train_model_simple",
           [("tokens_seen += input_batch.numel()", "tokens_seen += input_batch.shape[0]")],
           {"test_train_model_simple"}, says="counting sequences instead of tokens"),
    # Without cropping, a sequence longer than the context has no position embeddings.
    mutant("generate_context_not_cropped", CH05, "generate",
           [("idx_cond = idx[:, -context_size:]", "idx_cond = idx")],
           {"test_generate_greedy", "test_generate_temperature", "test_generate_top_k"}),
    mutant("temperature_multiplies", CH05, "generate",
           [("logits = logits / temperature", "logits = logits * temperature")],
           {"test_generate_temperature", "test_generate_top_k"}, says="multiplying the logits by the temperature"),
    mutant("top_k_drops_ties", CH05, "generate",
           [(TOP_K_STEP, "            top_logits, top_pos = torch.topk(logits, top_k)\n"
                         "            logits = torch.full_like(logits, -torch.inf).scatter(1, top_pos, top_logits)")],
           {"test_generate_top_k"}, says="keeping exactly k tokens"),
    mutant("top_k_keeps_k_plus_1", CH05, "generate",
           [("torch.topk(logits, top_k)", "torch.topk(logits, top_k + 1)")],
           {"test_generate_top_k"}, says="keeping k + 1 tokens"),
    # Right for a batch of one; in a batch whose rows differ, the first row's threshold is applied to every row.
    mutant("top_k_threshold_of_row_0", CH05, "generate",
           [("min_val = top_logits[:, -1:]", "min_val = top_logits[0, -1]")],
           {"test_generate_top_k"}, says="one threshold for the whole batch"),
    # exp() of large logits overflows: inf / inf is nan, and torch.multinomial refuses the probabilities.
    mutant("softmax_by_hand_without_max", CH05, "generate",
           [("            logits = logits - logits.max(dim=-1, keepdim=True).values  # same softmax, no overflow\n"
             "            probs = torch.softmax(logits, dim=-1)  # (batch, vocab_size)",
             "            probs = torch.exp(logits) / torch.exp(logits).sum(dim=-1, keepdim=True)")],
           {"test_generate_temperature"}, says="exp() of logits in the hundreds overflows"),
    mutant("eos_appended_before_stopping", CH05, "generate",
           [(EOS_STEP, "        idx = torch.cat((idx, idx_next), dim=1)\n"
                       "        if eos_id is not None and bool((idx_next == eos_id).all()):\n"
                       "            break")],
           {"test_generate_eos"}, says="appending eos_id before stopping"),
    mutant("eos_any_row_stops_the_batch", CH05, "generate",
           [("if bool(finished.all()):", "if bool(finished.any()):")],
           {"test_generate_eos"}, says="stopping the whole batch when any row chooses eos_id"),
    mutant("checkpoint_without_optimizer", CH05, "save_checkpoint",
           [(', "optimizer_state_dict": optimizer.state_dict()}', "}")],
           {"test_checkpoint_round_trip"}, says="'optimizer_state_dict'"),
    # Section 5.5, loading GPT-2's weights: each named mistake of the grader's WEIGHT_MISTAKES, and a loader that
    # converts the caller's params in place.
    mutant("gpt2_qkv_split_in_wrong_order", CH05, "load_weights_into_gpt",
           [("q_w, k_w, v_w = torch.chunk", "k_w, q_w, v_w = torch.chunk"),
            ("q_b, k_b, v_b = torch.chunk", "k_b, q_b, v_b = torch.chunk")],
           {"test_load_weights_into_gpt_parameters", "test_load_weights_into_gpt_logits"},
           says="splitting c_attn in the wrong order"),
    # The attention's weights are square: without the transpose they still fit, silently wrong.
    mutant("gpt2_attention_weights_not_transposed", CH05, "load_weights_into_gpt",
           [("assign(att.W_query.weight, q_w.T)", "assign(att.W_query.weight, q_w)"),
            ("assign(att.W_key.weight, k_w.T)", "assign(att.W_key.weight, k_w)"),
            ("assign(att.W_value.weight, v_w.T)", "assign(att.W_value.weight, v_w)")],
           {"test_load_weights_into_gpt_parameters", "test_load_weights_into_gpt_logits"},
           says="the Conv1D weights without a transpose"),
    mutant("gpt2_head_not_tied", CH05, "load_weights_into_gpt",
           [('    gpt.out_head.weight = assign(gpt.out_head.weight, params["wte.weight"])\n', "")],
           {"test_load_weights_into_gpt_tied_head", "test_load_weights_into_gpt_logits"},
           says="an output head left as the model initialised it"),
    mutant("gpt2_qkv_biases_dropped", CH05, "load_weights_into_gpt",
           [("        att.W_query.bias = assign(att.W_query.bias, q_b)\n"
             "        att.W_key.bias = assign(att.W_key.bias, k_b)\n"
             "        att.W_value.bias = assign(att.W_value.bias, v_b)\n", "")],
           {"test_load_weights_into_gpt_parameters", "test_load_weights_into_gpt_logits"},
           says="leaving the biases as the model initialised them"),
    mutant("gpt2_layer_norm_scale_and_shift_swapped", CH05, "load_weights_into_gpt",
           [('norm1.scale, params[f"h.{b}.ln_1.weight"]', 'norm1.scale, params[f"h.{b}.ln_1.bias"]'),
            ('norm1.shift, params[f"h.{b}.ln_1.bias"]', 'norm1.shift, params[f"h.{b}.ln_1.weight"]'),
            ('norm2.scale, params[f"h.{b}.ln_2.weight"]', 'norm2.scale, params[f"h.{b}.ln_2.bias"]'),
            ('norm2.shift, params[f"h.{b}.ln_2.bias"]', 'norm2.shift, params[f"h.{b}.ln_2.weight"]')],
           {"test_load_weights_into_gpt_parameters", "test_load_weights_into_gpt_logits"},
           says="LayerNorm's scale and shift swapped"),
    # The model is right, but the caller's dict now holds transposed tensors: loading it again gives a wrong model.
    rewrite("gpt2_params_transposed_in_place", CH05, {"load_weights_into_gpt": GPT2_IN_PLACE},
            {"test_load_weights_into_gpt_parameters"}, says="changed (its shape or its values)"),
]


# -- correct variants -----------------------------------------------------------------------------------------

LOSS_TRANSPOSED = '''def calc_loss_batch(input_batch, target_batch, model, device):
    logits = model(input_batch.to(device))
    # cross_entropy also takes (batch, classes, positions) logits with (batch, positions) targets.
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), target_batch.to(device))
'''

LOADER_ISLICE = '''def calc_loss_loader(data_loader, model, device, num_batches=None):
    import itertools

    if not len(data_loader):
        return float("nan")
    count = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    losses = [calc_loss_batch(x, y, model, device).item() for x, y in itertools.islice(data_loader, count)]
    return sum(losses) / count
'''

TRAIN_WHILE = '''def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq,
                       eval_iter, start_context, tokenizer, *, progress=False):
    history = {"train": [], "val": [], "tokens": []}
    seen = 0
    steps_done = 0
    for epoch in range(1, num_epochs + 1):
        model.train()
        batches = iter(train_loader)
        while (batch := next(batches, None)) is not None:
            inputs, targets = batch
            for p in model.parameters():
                p.grad = None
            calc_loss_batch(inputs, targets, model, device).backward()
            optimizer.step()
            seen += inputs.shape[0] * inputs.shape[1]
            if steps_done % eval_freq == 0:
                losses = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                for key, value in zip(("train", "val", "tokens"), (*losses, seen)):
                    history[key].append(value)
            steps_done += 1
        generate_and_print_sample(model, tokenizer, device, start_context)
    return history["train"], history["val"], history["tokens"]
'''

GENERATE_SORTED = '''def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):
    done = [False] * idx.shape[0]
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])[:, -1, :]
        if top_k is not None:
            kth = torch.sort(logits, dim=-1, descending=True).values[:, top_k - 1].unsqueeze(-1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_ids = torch.multinomial(probs, 1)
        else:
            next_ids = logits.argmax(dim=-1).unsqueeze(-1)
        if eos_id is not None:
            for row in range(len(done)):
                if done[row]:
                    next_ids[row, 0] = eos_id
                elif next_ids[row, 0].item() == eos_id:
                    done[row] = True
            if all(done):
                return idx
        idx = torch.cat([idx, next_ids], dim=-1)
    return idx
'''

# In the spirit of the book's own generate: one sequence at a time. For a batch, .item() and the (batch,)-shaped
# threshold raise a RuntimeError, which the grader accepts (the book's code does the same).
GENERATE_ONE_SEQUENCE = '''def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None,
             eos_id=None):
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])
        logits = logits[:, -1, :]
        if top_k is not None:
            threshold = torch.topk(logits, top_k).values[:, -1]
            logits = logits.masked_fill(logits < threshold, float("-inf"))
        if temperature > 0.0:
            scaled = logits / temperature
            next_id = torch.multinomial(torch.softmax(scaled, dim=-1), num_samples=1)
        else:
            next_id = torch.argmax(logits, dim=-1, keepdim=True)
        if eos_id is not None and next_id.item() == eos_id:
            break
        idx = torch.cat((idx, next_id), dim=1)
    return idx
'''

LOSS_LOG_SOFTMAX = '''def calc_loss_batch(input_batch, target_batch, model, device):
    log_probas = torch.log_softmax(model(input_batch.to(device)), dim=-1)       # (b, n, vocab)
    target_log_probas = log_probas.gather(-1, target_batch.to(device).unsqueeze(-1))  # (b, n, 1)
    return -target_log_probas.mean()
'''

CHECKPOINT_SAVE = '''def save_checkpoint(model, optimizer, path):
    state = dict(model_state_dict=model.state_dict(), optimizer_state_dict=optimizer.state_dict())
    torch.save(state, path)
'''

CHECKPOINT_LOAD = '''def load_checkpoint(path, model, optimizer=None, map_location=None):
    saved = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    model.load_state_dict(saved["model_state_dict"])
    if optimizer:
        optimizer.load_state_dict(saved["optimizer_state_dict"])
    return model.train()
'''

TEXT_IDS = '''def text_to_token_ids(text, tokenizer):
    return torch.tensor([tokenizer.encode(text, allowed_special={"<|endoftext|>"})])
'''

IDS_TEXT = '''def token_ids_to_text(token_ids, tokenizer):
    return tokenizer.decode(token_ids.reshape(-1).tolist())
'''

# Section 5.5 as a table of names and one load_state_dict (the model's masks kept, so that strict=True holds).
LOADER_STATE_DICT = '''def load_weights_into_gpt(gpt, params):
    emb = gpt.tok_emb.weight.shape[1]
    state = dict(gpt.state_dict())  # the attention masks stay as they are
    renamed = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight", "ln_f.weight": "final_norm.scale",
               "ln_f.bias": "final_norm.shift"}
    for theirs, ours in renamed.items():
        state[ours] = params[theirs]
    state["out_head.weight"] = params["wte.weight"]
    for b in range(len(gpt.trf_blocks)):
        h, t = f"h.{b}.", f"trf_blocks.{b}."
        weights = params[h + "attn.c_attn.weight"].T.split(emb, dim=0)  # 3 x (emb, emb), already (out, in)
        biases = params[h + "attn.c_attn.bias"].split(emb)
        for name, weight, bias in zip(("W_query", "W_key", "W_value"), weights, biases):
            state[f"{t}att.{name}.weight"] = weight
            state[f"{t}att.{name}.bias"] = bias
        for theirs, ours in {"attn.c_proj": "att.out_proj", "mlp.c_fc": "ff.layers.0",
                             "mlp.c_proj": "ff.layers.2"}.items():
            state[t + ours + ".weight"] = params[h + theirs + ".weight"].t()
            state[t + ours + ".bias"] = params[h + theirs + ".bias"]
        for theirs, ours in {"ln_1": "norm1", "ln_2": "norm2"}.items():
            state[t + ours + ".scale"] = params[h + theirs + ".weight"]
            state[t + ours + ".shift"] = params[h + theirs + ".bias"]
    gpt.load_state_dict(state, strict=True)
'''

# Section 5.5 copying into the model's own parameters under no_grad (c_attn viewed as (emb, 3, emb)).
LOADER_COPY = '''def load_weights_into_gpt(gpt, params):
    @torch.no_grad()
    def put(parameter, tensor):
        parameter.copy_(tensor)

    put(gpt.tok_emb.weight, params["wte.weight"])
    put(gpt.pos_emb.weight, params["wpe.weight"])
    put(gpt.out_head.weight, params["wte.weight"])
    put(gpt.final_norm.scale, params["ln_f.weight"])
    put(gpt.final_norm.shift, params["ln_f.bias"])
    for b, block in enumerate(gpt.trf_blocks):
        p = params
        fused = p[f"h.{b}.attn.c_attn.weight"].unflatten(-1, (3, -1))  # (emb, 3, emb)
        fused_bias = p[f"h.{b}.attn.c_attn.bias"].unflatten(-1, (3, -1))  # (3, emb)
        for i, linear in enumerate((block.att.W_query, block.att.W_key, block.att.W_value)):
            put(linear.weight, fused[:, i, :].mT)
            put(linear.bias, fused_bias[i])
        for linear, name in ((block.att.out_proj, "attn.c_proj"), (block.ff.layers[0], "mlp.c_fc"),
                             (block.ff.layers[2], "mlp.c_proj")):
            put(linear.weight, p[f"h.{b}.{name}.weight"].permute(1, 0))
            put(linear.bias, p[f"h.{b}.{name}.bias"])
        for norm, name in ((block.norm1, "ln_1"), (block.norm2, "ln_2")):
            put(norm.scale, p[f"h.{b}.{name}.weight"])
            put(norm.shift, p[f"h.{b}.{name}.bias"])
'''

VARIANTS = [
    Variant("transposed_loss_islice_loader_sorted_top_k", CH05,
            {"calc_loss_batch": LOSS_TRANSPOSED, "calc_loss_loader": LOADER_ISLICE,
             "train_model_simple": TRAIN_WHILE, "generate": GENERATE_SORTED,
             "load_weights_into_gpt": LOADER_STATE_DICT}),
    Variant("log_softmax_loss_one_sequence_generate", CH05,
            {"calc_loss_batch": LOSS_LOG_SOFTMAX, "generate": GENERATE_ONE_SEQUENCE,
             "save_checkpoint": CHECKPOINT_SAVE, "load_checkpoint": CHECKPOINT_LOAD,
             "text_to_token_ids": TEXT_IDS, "token_ids_to_text": IDS_TEXT,
             "load_weights_into_gpt": LOADER_COPY}),
]
