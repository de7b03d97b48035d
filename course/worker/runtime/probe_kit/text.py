"""GPT-2's tokenizer over a compact vocabulary: the GPT-2 tokens of a small corpus, renumbered from 0.

A GPT with GPT-2's 50,257-token vocabulary spends nearly all its time in the output head and the softmax over
50,257 logits, however small the rest of it is. The course's finetuning data use fewer than 2,000 distinct GPT-2
tokens, so the tiny GPTs of chapter 7's graders number just those tokens 0..V-1 (keeping GPT-2's segmentation
exactly) and have `vocab_size = V`: the same texts, the same token boundaries, a small output layer. The
end-of-text token (50256) is always in the vocabulary, as its last id.

A grader computes the vocabulary once (`compact_vocabulary`) and passes it to its probes, which build the
tokenizer from it (`CompactTokenizer(vocabulary)`): the worker and the trusted side encode alike.
"""

GPT2_END_OF_TEXT = 50256


def compact_vocabulary(texts, gpt2):
    """GPT-2's token ids of `texts` (encoded with `gpt2`), sorted, with the end-of-text token last: compact id i is
    GPT-2 id vocabulary[i]."""
    ids = {token for text in texts for token in gpt2.encode(text)}
    return sorted(ids - {GPT2_END_OF_TEXT}) + [GPT2_END_OF_TEXT]


class CompactTokenizer:
    """`encode` and `decode` like a tiktoken encoding, with the GPT-2 ids of `vocabulary` renumbered from 0.

    `gpt2` is GPT-2's tiktoken encoding (by default tiktoken.get_encoding("gpt2"), imported only when a probe
    builds a tokenizer, not when the worker starts). Text with a GPT-2 token outside the vocabulary raises KeyError.
    """

    def __init__(self, vocabulary, gpt2=None):
        if gpt2 is None:
            import tiktoken

            gpt2 = tiktoken.get_encoding("gpt2")
        self.gpt2 = gpt2
        self.gpt2_ids = list(vocabulary)  # compact id -> GPT-2 id
        self.compact_ids = {gpt2_id: i for i, gpt2_id in enumerate(self.gpt2_ids)}  # GPT-2 id -> compact id

    def encode(self, text, allowed_special=frozenset()):
        return [self.compact_ids[i] for i in self.gpt2.encode(text, allowed_special=allowed_special)]

    def decode(self, ids):
        return self.gpt2.decode([self.gpt2_ids[i] for i in ids])
