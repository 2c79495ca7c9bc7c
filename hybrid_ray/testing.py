"""Tiny offline models and test-only hooks: no hub download, seconds to build.

``tiny_encoder()`` builds a 2-layer BERT from a config with a word-level tokenizer whose vocabulary
is fixed here, so tests are deterministic and never touch the network. Importing this module
registers it as the model builder ``"tiny"`` (``model.name_or_path: tiny``, see
``hybrid_ray.modeling.builders``). ``CrashOnce`` is the fault-tolerance drill, a step hook
(``hybrid_ray.hooks``) that tests pass to ``run_training(..., step_hooks=[...])``.
"""

from __future__ import annotations

import os
import string
import time
from pathlib import Path

import torch

from hybrid_ray.hooks import StepHook
from hybrid_ray.modeling.builders import register_model_builder
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
    dropout: float | None = None,
) -> DualEncoder:
    """A tiny random BERT dual encoder; saved as a HF directory at ``path`` when given.

    ``dropout`` (hidden and attention) replaces BERT's 0.1: 0 for tests that compare gradients
    of runs whose forwards cannot draw the same masks (chunked vs whole batch, 1 vs 2 ranks).
    """
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
        **({} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}),
    )
    torch.manual_seed(seed)
    model = AutoModel.from_config(hf_config, add_pooling_layer=False)
    encoder = DualEncoder(model, tokenizer, config or EncoderConfig(max_length=64))
    if path is not None:
        encoder.save_pretrained(path)
    return encoder


@register_model_builder("tiny")
def _tiny_builder(config: EncoderConfig) -> DualEncoder:
    return tiny_encoder(config=config)


class CrashOnce(StepHook):
    """Fault-tolerance drill: kill rank 1 (rank 0 with one worker) once, before step ``at_step + 1``.

    A marker file ``<run dir>/.crashed-once`` keeps the restarted worker group from crashing again.
    Waits a few seconds first: Ray Train's controller commits a reported checkpoint when it next
    polls the workers (every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default), so a crash
    within that window would resume from the checkpoint before; the drill checks the common case.
    """

    def __init__(self, at_step: int) -> None:
        self.at_step = int(at_step)

    def before_step(self, global_step: int) -> None:
        if global_step != self.at_step or self.rank != min(1, self.world_size - 1):
            return
        marker = self.cfg.run.run_dir / ".crashed-once"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("crashed\n")
        time.sleep(2.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
        print("[hybrid-ray] CrashOnce: killing this worker to exercise FailureConfig", flush=True)
        os._exit(1)


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
