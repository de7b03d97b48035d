"""Mutants and variants of appendix D: adding bells and whistles to the training loop."""

from tests.submissions.catalog.base import Variant, mutant

APPD = "appd_training_loop"
# train_model runs on a correct stand-in of learning_rate_at: a wrong schedule costs only its own test.
SCHEDULE = {"test_learning_rate_at"}

BACKWARD_THEN_CLIP = '''            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()  # fills the gradients that clipping rescales

            warmup_over = global_step > warmup_steps if orig_book_version else global_step >= warmup_steps
            if warmup_over:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
'''
CLIP_THEN_BACKWARD = '''            warmup_over = (global_step > warmup_steps if orig_book_version
                           else global_step >= warmup_steps)
            if warmup_over:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)

            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
'''
SET_RATE = '''            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
'''

MUTANTS = [
    mutant("warmup_one_step_ahead", APPD, "learning_rate_at",
           [("return initial_lr + step * lr_increment", "return initial_lr + (step + 1) * lr_increment")],
           SCHEDULE, says="a warmup one step ahead"),
    mutant("warmup_from_zero", APPD, "learning_rate_at",
           [("return initial_lr + step * lr_increment", "return peak_lr * step / warmup_steps")],
           SCHEDULE, says="a warmup that starts at 0"),
    mutant("cosine_progress_over_all_steps", APPD, "learning_rate_at",
           [("progress = (step - warmup_steps) / (total_steps - warmup_steps)",
             "progress = (step - warmup_steps) / total_steps")],
           SCHEDULE, says="a cosine progress measured over all steps"),
    mutant("cosine_decays_to_zero", APPD, "learning_rate_at",
           [("return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))",
             "return peak_lr * 0.5 * (1 + math.cos(math.pi * progress))")],
           SCHEDULE, says="a cosine decay to 0 instead of min_lr"),
    mutant("highest_gradient_in_absolute_value", APPD, "find_highest_gradient",
           [("param.grad.flatten().max()", "param.grad.flatten().abs().max()")],
           {"test_find_highest_gradient"}, says="the largest absolute value"),
    mutant("clipping_before_backward", APPD, "train_model",
           [(BACKWARD_THEN_CLIP, CLIP_THEN_BACKWARD)],
           {"test_train_model_clipping"}, says="they were not clipped"),
    mutant("clipping_during_warmup", APPD, "train_model",
           [("            if warmup_over:\n", "            if True:\n")],
           {"test_train_model_clipping"}, says="clipped during the warmup"),
    mutant("clipping_to_half", APPD, "train_model",
           [("max_norm=1.0)", "max_norm=0.5)")],
           {"test_train_model_clipping"}, says="clipped to another norm"),
    mutant("train_model_without_zero_grad", APPD, "train_model",
           [("            optimizer.zero_grad()\n", "")],
           {"test_train_model_clipping"}, says="reset the gradients at the start of every step"),
    # The grader asks for the print edition's rule (orig_book_version=True): no clipping at step warmup_steps.
    mutant("clipping_flag_ignored", APPD, "train_model",
           [("warmup_over = global_step > warmup_steps if orig_book_version else global_step >= warmup_steps",
             "warmup_over = global_step >= warmup_steps")],
           {"test_train_model_clipping"}, says="Your loop ignores the flag"),
    # The grader hands the model over in eval mode: the first steps then train without dropout.
    mutant("train_model_never_switches_to_training_mode", APPD, "train_model",
           [("    for epoch in range(n_epochs):\n        model.train()\n", "    for epoch in range(n_epochs):\n")],
           {"test_train_model_clipping"}, says="those of the model in eval mode"),
    # The grader's optimizer has two parameter groups, as large models are trained with.
    mutant("rate_set_in_first_group_only", APPD, "train_model",
           [(SET_RATE, '            optimizer.param_groups[0]["lr"] = lr\n')],
           {"test_train_model_schedule"}, says="reaches the first parameter group only"),
    mutant("rate_set_after_the_step", APPD, "train_model",
           [(SET_RATE, ""),
            ("            optimizer.step()\n", "            optimizer.step()\n" + SET_RATE)],
           {"test_train_model_schedule"}, says="used the rate of the step before"),
    mutant("peak_read_at_every_step", APPD, "train_model",
           [('    peak_lr = optimizer.param_groups[0]["lr"]  # read once: the loop overwrites it\n', ""),
            ("            global_step += 1\n",
             '            global_step += 1\n            peak_lr = optimizer.param_groups[0]["lr"]\n')],
           {"test_train_model_schedule", "test_train_model_returns"},
           says="reading peak_lr from the optimizer at every step"),
    mutant("rates_tracked_per_epoch", APPD, "train_model",
           [("            track_lrs.append(lr)\n", ""),
            ("        generate_and_print_sample(model, tokenizer, device, start_context)\n",
             "        generate_and_print_sample(model, tokenizer, device, start_context)\n"
             "        track_lrs.append(lr)\n")],
           {"test_train_model_schedule", "test_train_model_returns"}, says="the number of entries of track_lrs"),
]


# -- correct variants -----------------------------------------------------------------------------------------

SCHEDULE_TORCH = '''def learning_rate_at(step, total_steps, warmup_steps, peak_lr, initial_lr=3e-05, min_lr=1e-6):
    if step < warmup_steps:
        return initial_lr + (peak_lr - initial_lr) * step / warmup_steps
    angle = torch.tensor(torch.pi * (step - warmup_steps) / (total_steps - warmup_steps))
    return float(min_lr + (peak_lr - min_lr) * (torch.cos(angle) + 1) / 2)
'''

HIGHEST_STACKED = '''def find_highest_gradient(model):
    maxima = [p.grad.max() for p in model.parameters() if p.grad is not None]
    return torch.stack(maxima).max() if maxima else None
'''

# The print edition's clipping condition (only after the warmup step), whatever orig_book_version says; the
# schedule inline, as the book writes it; clipping by hand.
TRAIN_PRINT_EDITION = '''def train_model(model, train_loader, val_loader, optimizer, device, n_epochs, eval_freq,
                eval_iter, start_context, tokenizer, warmup_steps, initial_lr=3e-05, min_lr=1e-6,
                orig_book_version=False, *, progress=False):
    history = ([], [], [], [])
    seen, step = 0, 0
    peak = optimizer.param_groups[0]["lr"]
    total = n_epochs * len(train_loader)
    increment = (peak - initial_lr) / warmup_steps
    for epoch in range(n_epochs):
        model.train()
        for inputs, targets in train_loader:
            for p in model.parameters():
                p.grad = None
            if step < warmup_steps:
                rate = initial_lr + step * increment
            else:
                rate = min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps)
                                                                     / (total - warmup_steps)))
            for group in optimizer.param_groups:
                group["lr"] = rate
            history[3].append(optimizer.param_groups[0]["lr"])
            calc_loss_batch(inputs, targets, model, device).backward()
            if step > warmup_steps:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
                if norm > 1.0:
                    for g in grads:
                        g.mul_(float(1.0 / (norm + 1e-6)))
            optimizer.step()
            seen += inputs.numel()
            if step % eval_freq == 0:
                losses = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                history[0].append(losses[0])
                history[1].append(losses[1])
                history[2].append(seen)
            step += 1
        generate_and_print_sample(model, tokenizer, device, start_context)
    return history
'''

VARIANTS = [
    Variant("torch_schedule_print_edition_clipping", APPD,
            {"learning_rate_at": SCHEDULE_TORCH, "train_model": TRAIN_PRINT_EDITION}),
    Variant("stacked_highest_gradient", APPD, {"find_highest_gradient": HIGHEST_STACKED}),
]
