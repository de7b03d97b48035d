"""Mutants and variants of chapter 2's bonus: byte pair encoding from scratch."""

from tests.submissions.catalog.base import Variant, mutant, rewrite

BPE = "ch02_bpe"
GPT2_ALL = {"test_gpt2_load", "test_gpt2_encode", "test_gpt2_newlines", "test_gpt2_decode"}

# The simplest correct trainer: recount every pair of every pre-token of the text after each merge (a Counter in
# reading order and max(): ties go to the first occurrence). Special tokens get their IDs before the merges, as
# in the book's layout; encoding merges one occurrence at a time; GPT-2's merges are read with str.split().
RECOUNTING_TOKENIZER = '''class BPETokenizerSimple:
    def __init__(self):
        self.vocab = {}
        self.inverse_vocab = {}
        self.bpe_merges = {}

    def train(self, text, vocab_size, allowed_special={"<|endoftext|>"}):  # noqa: B006
        specials = sorted(set(allowed_special or ()))
        self.vocab = {i: BYTE_TO_CHAR[i] for i in range(256)}
        for token in specials:
            self.vocab[len(self.vocab)] = token
        pieces = []
        for chunk in split_on_special_tokens(text, specials):
            if chunk not in specials:
                pieces += [list(p.encode("utf-8")) for p in pretokenize(chunk)]
        self.bpe_merges = {}
        while len(self.vocab) < vocab_size:
            counts = Counter(pair for ids in pieces for pair in zip(ids, ids[1:]))
            if not counts:
                break
            pair = max(counts, key=counts.get)
            new_id = len(self.vocab)
            self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]
            self.bpe_merges[pair] = new_id
            pieces = [merge_pair(ids, pair, new_id) for ids in pieces]
        self.inverse_vocab = {t: i for i, t in self.vocab.items()}

    def special_tokens(self):
        merged = set(self.bpe_merges.values())
        return {t: i for i, t in self.vocab.items() if i not in merged and t not in CHAR_TO_BYTE}

    def encode(self, text, allowed_special=None):
        specials = self.special_tokens()
        allowed = set(specials) if allowed_special == "all" else set(allowed_special or ()) & set(specials)
        for token in specials:
            if token in text and token not in allowed:
                raise ValueError(f"disallowed special token {token!r}")
        rank = {pair: r for r, pair in enumerate(self.bpe_merges)}
        out = []
        for chunk in split_on_special_tokens(text, sorted(allowed)):
            if chunk in allowed:
                out.append(specials[chunk])
                continue
            for piece in pretokenize(chunk):
                ids = [self.inverse_vocab[BYTE_TO_CHAR[b]] for b in piece.encode("utf-8")]
                while True:
                    candidates = [(rank[p], p) for p in zip(ids, ids[1:]) if p in rank]
                    if not candidates:
                        break
                    pair = min(candidates)[1]
                    ids = merge_pair(ids, pair, self.bpe_merges[pair])
                out += ids
        return out

    def decode(self, token_ids):
        specials = self.special_tokens()
        chunks = []
        for i in token_ids:
            token = self.vocab.get(i)
            if token is None:
                raise ValueError(f"unknown token id {i}")
            chunks.append(token.encode("utf-8") if token in specials else bytes(CHAR_TO_BYTE[c] for c in token))
        return b"".join(chunks).decode("utf-8", errors="replace")

    def save_vocab_and_merges(self, vocab_path, bpe_merges_path):
        with open(vocab_path, "w", encoding="utf-8") as f:
            json.dump(self.vocab, f)
        with open(bpe_merges_path, "w", encoding="utf-8") as f:
            json.dump([{"pair": [a, b], "new_id": n} for (a, b), n in self.bpe_merges.items()], f)

    def load_vocab_and_merges(self, vocab_path, bpe_merges_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {int(k): v for k, v in json.load(f).items()}
        self.inverse_vocab = {v: k for k, v in self.vocab.items()}
        with open(bpe_merges_path, encoding="utf-8") as f:
            self.bpe_merges = {(m["pair"][0], m["pair"][1]): m["new_id"] for m in json.load(f)}

    def load_vocab_and_merges_from_openai(self, vocab_path, bpe_merges_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.inverse_vocab = json.load(f)
        self.vocab = {i: t for t, i in self.inverse_vocab.items()}
        with open(bpe_merges_path, encoding="utf-8") as f:
            lines = f.read().split("\\n")[1:]
        self.bpe_merges = {}
        for line in lines:
            parts = line.split()
            if len(parts) == 2:
                a, b = parts
                self.bpe_merges[(self.inverse_vocab[a], self.inverse_vocab[b])] = self.inverse_vocab[a + b]
'''

# Self-contained: its own pre-tokenizer (regex.finditer), a heap of ranks to encode, the tables kept as
# token strings; it uses none of the notebook's helpers.
STRING_TOKENIZER = '''class BPETokenizerSimple:
    PATTERN = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+""")

    def __init__(self):
        self.vocab = {}
        self.inverse_vocab = {}
        self.bpe_merges = {}

    def _words(self, text):
        return [m.group(0) for m in self.PATTERN.finditer(text)]

    def _specials(self):
        merged = set(self.bpe_merges.values())
        return {t for i, t in self.vocab.items() if i not in merged and len(t) > 1}

    def _cut(self, text, specials):
        if not specials:
            return [text]
        parts = re.split("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")", text)
        return [p for p in parts if p]

    def train(self, text, vocab_size, allowed_special={"<|endoftext|>"}):  # noqa: B006
        specials = sorted(allowed_special or ())
        words = []
        for part in self._cut(text, specials):
            if part not in specials:
                words += [[BYTE_TO_CHAR[b] for b in w.encode("utf-8")] for w in self._words(part)]
        strings = [BYTE_TO_CHAR[b] for b in range(256)]
        merges = []
        while len(strings) + len(specials) < vocab_size:
            seen = {}
            for w in words:
                for pair in zip(w, w[1:]):
                    seen[pair] = seen.get(pair, 0) + 1
            if not seen:
                break
            best = None
            for pair, n in seen.items():
                if best is None or n > seen[best]:
                    best = pair
            merges.append(best)
            strings.append(best[0] + best[1])
            new_words = []
            for w in words:
                out, i = [], 0
                while i < len(w):
                    if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                        out.append(best[0] + best[1])
                        i += 2
                    else:
                        out.append(w[i])
                        i += 1
                new_words.append(out)
            words = new_words
        strings += specials
        self.vocab = dict(enumerate(strings))
        self.inverse_vocab = {t: i for i, t in self.vocab.items()}
        self.bpe_merges = {(self.inverse_vocab[a], self.inverse_vocab[b]): self.inverse_vocab[a + b] for a, b in merges}

    def encode(self, text, allowed_special=None):
        specials = self._specials()
        allowed = specials if allowed_special == "all" else specials & set(allowed_special or ())
        bad = [t for t in specials - allowed if t in text]
        if bad:
            raise ValueError(f"special tokens not allowed: {bad}")
        rank = {(self.vocab[a], self.vocab[b]): r for r, (a, b) in enumerate(self.bpe_merges)}
        ids = []
        for part in self._cut(text, allowed):
            if part in allowed:
                ids.append(self.inverse_vocab[part])
                continue
            for w in self._words(part):
                symbols = [BYTE_TO_CHAR[b] for b in w.encode("utf-8")]
                while len(symbols) > 1:
                    ranked = [(rank[p], i) for i, p in enumerate(zip(symbols, symbols[1:])) if p in rank]
                    if not ranked:
                        break
                    best = min(ranked)[0]
                    out, i = [], 0
                    while i < len(symbols):
                        if i + 1 < len(symbols) and rank.get((symbols[i], symbols[i + 1])) == best:
                            out.append(symbols[i] + symbols[i + 1])
                            i += 2
                        else:
                            out.append(symbols[i])
                            i += 1
                    symbols = out
                ids += [self.inverse_vocab[s] for s in symbols]
        return ids

    def decode(self, token_ids):
        specials = self._specials()
        text = bytearray()
        for i in token_ids:
            if i not in self.vocab:
                raise ValueError(f"Token ID {i} not found in vocab.")
            t = self.vocab[i]
            text.extend(t.encode("utf-8") if t in specials else [CHAR_TO_BYTE[c] for c in t])
        return text.decode("utf-8", "replace")

    def save_vocab_and_merges(self, vocab_path, bpe_merges_path):
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write(json.dumps({str(k): v for k, v in self.vocab.items()}, ensure_ascii=False))
        with open(bpe_merges_path, "w", encoding="utf-8") as f:
            f.write(json.dumps([{"pair": list(p), "new_id": n} for p, n in self.bpe_merges.items()]))

    def load_vocab_and_merges(self, vocab_path, bpe_merges_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {int(k): v for k, v in json.loads(f.read()).items()}
        self.inverse_vocab = {v: k for k, v in self.vocab.items()}
        with open(bpe_merges_path, encoding="utf-8") as f:
            self.bpe_merges = {tuple(m["pair"]): m["new_id"] for m in json.loads(f.read())}

    def load_vocab_and_merges_from_openai(self, vocab_path, bpe_merges_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.inverse_vocab = json.load(f)
        self.vocab = {v: k for k, v in self.inverse_vocab.items()}
        self.bpe_merges = {}
        with open(bpe_merges_path, encoding="utf-8") as f:
            for line in f.read().splitlines():
                if line and not line.startswith("#"):
                    a, b = line.split(" ")
                    self.bpe_merges[(self.inverse_vocab[a], self.inverse_vocab[b])] = self.inverse_vocab[a + b]
'''

MUTANTS = [
    mutant("train_without_pretokens", BPE, "bpe_tokenizer",
           [("pretoken_counts.update(pretokenize(piece))", "pretoken_counts.update([piece])")],
           {"test_train_learns_merges", "test_train_stops_at_vocab_size", "test_train_breaks_ties",
            "test_encode_decode_trained", "test_special_tokens"}, says="across word boundaries"),
    mutant("train_counts_distinct_words_once", BPE, "bpe_tokenizer",
           [("counts = list(pretoken_counts.values())", "counts = [1] * len(pretoken_counts)")],
           {"test_train_learns_merges", "test_train_stops_at_vocab_size"},
           says="counting each distinct pre-token once"),
    mutant("train_ties_by_counter_order", BPE, "bpe_tokenizer",
           [("pair = most_frequent_pair(pair_counts, words)", "pair = max(pair_counts, key=pair_counts.get)")],
           {"test_train_breaks_ties"}, says="occurs first in the text"),
    mutant("train_forgets_special_tokens_in_size", BPE, "bpe_tokenizer",
           [("num_merges = vocab_size - 256 - len(special_tokens)", "num_merges = vocab_size - 256")],
           {"test_train_stops_at_vocab_size"}, says="number of tokens in vocab"),
    mutant("encode_leftmost_pair_first", BPE, "bpe_tokenizer",
           [("pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float(\"inf\")))",
             "pair = next((p for p in zip(ids, ids[1:]) if p in ranks), None)")],
           {"test_gpt2_encode", "test_gpt2_newlines"}),
    mutant("encode_allows_every_special_token", BPE, "bpe_tokenizer",
           [("        if disallowed:\n            raise ValueError",
             "        if False:\n            raise ValueError")],
           {"test_special_tokens", "test_gpt2_encode"}, says="did not raise ValueError"),
    mutant("load_keeps_string_keys", BPE, "bpe_tokenizer",
           [("self.vocab = {int(token_id): token for token_id, token in json.load(file).items()}",
             "self.vocab = dict(json.load(file))")],
           {"test_save_and_load"}, says="back into int"),
    mutant("openai_header_not_skipped", BPE, "bpe_tokenizer",
           [('if not line or line.startswith("#version"):', "if not line:")],
           GPT2_ALL),
    # The class tests run correct stand-ins of the helpers: a helper's bug costs the helper's own test only.
    mutant("pretokenize_without_contractions", BPE, "pretokenize",
           [("return regex.findall(GPT2_SPLIT_PATTERN, text)",
             "return regex.findall(r\" ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+\", text)")],
           {"test_pretokenize"}, says="contractions first"),
    # Overlapping pairs: after a merge the scan moves one ID on, so "a a a" merges twice.
    mutant("merge_pair_steps_one_after_a_merge", BPE, "merge_pair",
           [("merged.append(new_id)  # the pair becomes one token; skip both of its IDs\n            i += 2",
             "merged.append(new_id)\n            i += 1")],
           {"test_merge_pair"}, says="move past both IDs"),
    mutant("most_frequent_pair_by_counter_order", BPE, "most_frequent_pair",
           [("tied = {pair for pair, count in pair_counts.items() if count == top}",
             "return max(pair_counts, key=pair_counts.get)")],
           {"test_most_frequent_pair"}, says="the counts' own order is not the text's order"),
    # The tokens used as a pattern unescaped: "|" in "<|endoftext|>" means "or".
    mutant("split_without_escaping", BPE, "split_on_special_tokens",
           [("re.escape(token) for token in longest_first", "token for token in longest_first")],
           {"test_split_on_special_tokens"}, says="escape them"),
    # `if allowed_special:` reads an explicit empty set as "not given" and skips the check.
    mutant("encode_skips_the_check_for_an_empty_set", BPE, "bpe_tokenizer",
           [("        if disallowed:\n            raise ValueError",
             "        if disallowed and (allowed_special is None or allowed_special):\n            raise ValueError")],
           {"test_special_tokens", "test_gpt2_encode"}, says="an empty set allows no special token"),
    # The incremental count update counts a pair once per word, though "aaaa" holds (a, a) three times.
    mutant("train_updates_each_pair_once_per_word", BPE, "bpe_tokenizer",
           [("for old_pair in zip(token_ids, token_ids[1:]):", "for old_pair in set(zip(token_ids, token_ids[1:])):"),
            ("for new_pair in zip(merged, merged[1:]):", "for new_pair in set(zip(merged, merged[1:])):")],
           {"test_train_learns_merges"}, says="words such as aaaa and abab"),
    # The update forgets the weights: a word that occurs 5 times changes its pairs' counts by 1.
    mutant("train_updates_without_weights", BPE, "bpe_tokenizer",
           [("pair_counts[old_pair] -= counts[index]", "pair_counts[old_pair] -= 1"),
            ("pair_counts[new_pair] += counts[index]", "pair_counts[new_pair] += 1")],
           {"test_train_learns_merges", "test_train_stops_at_vocab_size", "test_train_breaks_ties",
            "test_encode_decode_trained", "test_special_tokens", "test_save_and_load"}, says="training stopped after"),
    rewrite("decode_with_spaces_for_g", BPE, {"bpe_tokenizer": RECOUNTING_TOKENIZER.replace(
        "bytes(CHAR_TO_BYTE[c] for c in token))", "token.replace(\"Ġ\", \" \").encode(\"utf-8\"))")},
        {"test_encode_decode_trained", "test_special_tokens", "test_gpt2_decode"}),
]

VARIANTS = [
    Variant("recount_every_pair_specials_first", BPE, {"bpe_tokenizer": RECOUNTING_TOKENIZER}),
    Variant("strings_and_own_pretokenizer", BPE, {"bpe_tokenizer": STRING_TOKENIZER}),
]
