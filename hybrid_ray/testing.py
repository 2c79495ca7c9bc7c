"""Tiny offline models for tests and examples: no hub download, seconds to build.

``tiny_encoder()`` builds a 2-layer BERT from a config with a word-level tokenizer whose vocabulary
is fixed here, so tests are deterministic and never touch the network.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from hybrid_ray.modeling.encoder import DualEncoder, EncoderConfig

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    words = [
        "query", "passage", "the", "a", "of", "and", "in", "to", "is", "god", "light", "day",
        "night", "water", "earth", "heaven", "man", "said", "was", "let", "be", "there",
        "hello", "world", "cat", "dog", "house", "red", "blue", "green", "one", "two", "three",
    ]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return SPECIAL + words + [c for c in chars if c not in words]


def tiny_tokenizer():
    """A fast WordPiece-free word-level tokenizer (lower-cased, punctuation split)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(_vocab()))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )


def tiny_encoder(
    path: str | Path | None = None,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    config: EncoderConfig | None = None,
) -> DualEncoder:
    """A tiny random BERT dual encoder; saved as a HF directory at ``path`` when given."""
    from transformers import AutoModel, BertConfig

    tokenizer = tiny_tokenizer()
    hf_config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        intermediate_size=hidden * 2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModel.from_config(hf_config, add_pooling_layer=False)
    encoder = DualEncoder(model, tokenizer, config or EncoderConfig(max_length=64))
    if path is not None:
        encoder.save_pretrained(path)
    return encoder


def signature_pairs(n: int, seed: int = 0, langs: tuple[str, ...] = ("de", "en", "es"), id_prefix: str = "p"):
    """Learnable parallel pairs for training tests: query and positive share a 3-word signature.

    Each language marks its texts with its own leading word, so the pairs are parallel (same
    ``pair_id`` in every language) but not identical across languages; one hard negative per
    row is the next pair's signature. A tiny encoder's loss falls on these within a few dozen steps.
    """
    import random

    import pyarrow as pa

    rng = random.Random(seed)
    words = [w for w in _vocab()[5:] if w.isalpha()]
    rows: dict[str, list] = {"pair_id": [], "lang": [], "query": [], "positive": [], "negatives": []}
    sigs = [rng.sample(words, 3) for _ in range(n)]
    for i, sig in enumerate(sigs):
        for j, lang in enumerate(langs):
            marker = words[j]
            rows["pair_id"].append(f"{id_prefix}{i}")
            rows["lang"].append(lang)
            rows["query"].append(f"{marker} " + " ".join(sig))
            rows["positive"].append(f"{marker} " + " ".join(reversed(sig)) + " " + rng.choice(words))
            rows["negatives"].append([f"{marker} " + " ".join(sigs[(i + 1) % n])])
    return pa.table(rows)
