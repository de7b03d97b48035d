"""Mutants and variants of chapter 2: working with text data."""

from tests.submissions.catalog.base import Variant, mutant

CH02 = "ch02_text_data"

MUTANTS = [
    mutant("tokenize_keeps_whitespace", CH02, "simple_tokenize",
           [("return [piece.strip() for piece in pieces if piece.strip()]",
             "return [piece for piece in pieces if piece]")],
           {"test_simple_tokenize"}, says="drop the empty and whitespace-only pieces"),
    # The tokenizers run on a correct simple_tokenize (a stand-in): a tokenizing bug costs its own test only.
    mutant("tokenize_keeps_empty_tokens", CH02, "simple_tokenize",
           [("return [piece.strip() for piece in pieces if piece.strip()]",
             "return [piece.strip() for piece in pieces if piece]")],
           {"test_simple_tokenize"}, says="drop the empty and whitespace-only pieces"),
    mutant("vocab_not_sorted", CH02, "build_vocab",
           [("vocab_tokens = sorted(set(tokens))", "vocab_tokens = list(dict.fromkeys(tokens))")],
           {"test_build_vocab"}),
    mutant("vocab_specials_first", CH02, "build_vocab",
           [("vocab_tokens.append(special)", "vocab_tokens.insert(0, special)")],
           {"test_build_vocab"}),
    # Encoding with str.split() instead of the tokenizer of section 2.2: punctuation stays glued to the words.
    mutant("v1_encode_splits_on_spaces", CH02, "simple_tokenizer_v1",
           [("return [self.str_to_int[token] for token in simple_tokenize(text)]",
             "return [self.str_to_int[token] for token in text.split()]")],
           {"test_tokenizer_v1_encode"}, says="tokenize the text with simple_tokenize, then look the tokens up"),
    mutant("v1_decode_keeps_space_before_punctuation", CH02, "simple_tokenizer_v1",
           [("return re.sub(r'\\s+([,.?!\"()\\'])', r'\\1', text)", "return text")],
           {"test_tokenizer_v1_decode"}),
    mutant("v2_no_unknown_token", CH02, "simple_tokenizer_v2",
           [('tokens = [token if token in self.str_to_int else "<|unk|>" for token in tokens]', "pass")],
           {"test_tokenizer_v2_unknown_words"}),
    mutant("v2_decode_with_v1_punctuation", CH02, "simple_tokenizer_v2",
           [("r'\\s+([,.:;?!\"()\\'])'", "r'\\s+([,.?!\"()\\'])'")],
           {"test_tokenizer_v2_endoftext"}, says="also remove the space in front of : and ;"),
    mutant("dataset_off_by_one_window", CH02, "gpt_dataset_v1",
           [("range(0, len(token_ids) - max_length, stride)", "range(0, len(token_ids) - max_length - 1, stride)")],
           {"test_dataset_windows", "test_dataset_short_texts"}),
    mutant("dataset_targets_not_shifted", CH02, "gpt_dataset_v1",
           [("token_ids[start + 1:start + max_length + 1]", "token_ids[start:start + max_length]")],
           {"test_dataset_windows", "test_dataset_short_texts"}),
    # Windows that run past the end of the text are shorter: the DataLoader cannot stack them into a batch.
    mutant("dataset_windows_run_past_the_end", CH02, "gpt_dataset_v1",
           [("range(0, len(token_ids) - max_length, stride)", "range(0, len(token_ids) - 1, stride)")],
           {"test_dataset_windows", "test_dataset_short_texts"},
           says="a window starts at token 0"),
    mutant("dataset_ignores_stride", CH02, "gpt_dataset_v1",
           [("range(0, len(token_ids) - max_length, stride)", "range(0, len(token_ids) - max_length, 1)")],
           {"test_dataset_windows"}),
    mutant("dataloader_ignores_shuffle", CH02, "create_dataloader_v1",
           [("shuffle=shuffle,", "shuffle=False,")],
           {"test_dataloader_shuffle"}),
    mutant("dataloader_always_drops_last", CH02, "create_dataloader_v1",
           [("drop_last=drop_last,", "drop_last=True,")],
           {"test_dataloader_batches"}),
    # Side effect: the book's demo seed copied into the function fixes the shuffle whatever the caller seeds.
    mutant("dataloader_reseeds_global_rng", CH02, "create_dataloader_v1",
           [('tokenizer = tiktoken.get_encoding("gpt2")',
             'torch.manual_seed(123)\n    tokenizer = tiktoken.get_encoding("gpt2")')],
           {"test_dataloader_shuffle"}, says="reseeds or replaces torch's global random generator"),
    mutant("embeddings_without_positions", CH02, "create_input_embeddings",
           [("return token_embeddings + pos_embeddings", "return token_embeddings")],
           {"test_input_embeddings"}),
]


DATASET_UNFOLD = '''class GPTDatasetV1(Dataset):
    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        ids = torch.tensor(tokenizer.encode(txt, allowed_special={"<|endoftext|>"}))
        if len(ids) > max_length:
            for window in ids.unfold(0, max_length + 1, stride):
                self.input_ids.append(window[:-1].clone())
                self.target_ids.append(window[1:].clone())

    def __len__(self):
        return len(self.target_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]
'''

TOKENIZE_FILTER = '''def simple_tokenize(text):
    parts = map(str.strip, re.split(r'([,.:;?_!"()\\']|--|\\s)', text))
    return list(filter(None, parts))
'''

VOCAB_ONE_LINER = '''def build_vocab(tokens, special_tokens=()):
    words = sorted(set(tokens))
    extra = [s for i, s in enumerate(special_tokens) if s not in words and s not in special_tokens[:i]]
    return dict(zip(words + extra, range(len(words) + len(extra))))
'''

EMBEDDINGS_INDEXING = '''def create_input_embeddings(token_ids, token_embedding_layer, pos_embedding_layer):
    n = token_ids.size(1)
    return token_embedding_layer.weight[token_ids] + pos_embedding_layer.weight[:n].unsqueeze(0)
'''

# The book's own edge-case behaviour, written for this course: special tokens appended without a check, and a
# dataset that refuses a text too short for one window (the book's current notebook asserts).
VOCAB_AS_THE_BOOK = '''def build_vocab(tokens, special_tokens=()):
    all_tokens = sorted(set(tokens))
    all_tokens.extend(special_tokens)
    return {token: integer for integer, token in enumerate(all_tokens)}
'''

DATASET_THAT_REFUSES_SHORT_TEXTS = '''class GPTDatasetV1(Dataset):
    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        assert len(token_ids) > max_length, "the text needs at least max_length + 1 tokens"
        for i in range(0, len(token_ids) - max_length, stride):
            self.input_ids.append(torch.tensor(token_ids[i:i + max_length]))
            self.target_ids.append(torch.tensor(token_ids[i + 1:i + max_length + 1]))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]
'''

VARIANTS = [
    Variant("book_edge_cases", CH02,
            {"build_vocab": VOCAB_AS_THE_BOOK, "gpt_dataset_v1": DATASET_THAT_REFUSES_SHORT_TEXTS}),
    Variant("dataset_unfold_and_one_liners", CH02,
            {"gpt_dataset_v1": DATASET_UNFOLD, "simple_tokenize": TOKENIZE_FILTER, "build_vocab": VOCAB_ONE_LINER,
             "create_input_embeddings": EMBEDDINGS_INDEXING}),
]
