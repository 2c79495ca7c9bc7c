"""Write the sentence-transformers layout into an encoder directory.

``SentenceTransformer(dir)`` ignores ``hybrid_ray_encoder.json``: without ``modules.json`` it falls
back to unnormalised mean pooling and no prefixes, which is wrong for a cls-pooled model and
silently worse for every model trained with "query: "/"passage: " prefixes. The files written
here make sentence-transformers (and MTEB and the vector-database integrations built on it)
compute exactly ``DualEncoder.encode``:

- ``modules.json``: Transformer -> Pooling -> (Normalize when ``normalize``);
- ``1_Pooling/config.json``: mean or cls pooling over all tokens *including* the prompt tokens,
  which is what ``DualEncoder`` does (the prefix is part of the text it pools);
- ``config_sentence_transformers.json``: the prefixes as prompts ``query`` / ``passage`` (and
  ``document``, the name ``encode_document`` and MTEB 2 look up), default prompt ``passage``;
- ``sentence_bert_config.json``: ``max_seq_length`` = the encoder's ``max_length``.

The JSON uses the keys and the legacy ``sentence_transformers.models.*`` class paths that every
sentence-transformers release from 3 to 6 reads, so no sentence-transformers is needed to write it.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from hybrid_ray.export.model_dir import hidden_size, read_encoder_dir

ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            "1_Pooling/config.json", "2_Normalize")
# The prompt plain ``encode(texts)`` uses: ingestion into a vector store embeds documents, and
# queries go through ``encode_query`` / ``prompt_name="query"``.
DEFAULT_PROMPT = "passage"


def _accepts_pooling_flag(hf_config: dict[str, Any]) -> bool:
    """Whether the model class takes ``add_pooling_layer`` (BERT, XLM-R, ...).

    sentence-transformers loads ``AutoModel`` *with* its pooler head, which hybrid-ray never
    saved or used; passing ``add_pooling_layer=False`` avoids a randomly initialised, unused head
    and the "newly initialized" warning. Architectures without that argument must not get it.
    """
    import transformers

    for arch in hf_config.get("architectures") or []:
        cls = getattr(transformers, str(arch), None)
        if cls is not None:
            return "add_pooling_layer" in inspect.signature(cls.__init__).parameters
    return False


def st_configs(model_dir: str | Path) -> dict[str, Any]:
    """The sentence-transformers config files for ``model_dir``, as ``{relative path: JSON object}``."""
    cfg, hf_config = read_encoder_dir(model_dir)
    dim = hidden_size(hf_config, model_dir)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if cfg.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": cfg.pooling == "cls",
        "pooling_mode_mean_tokens": cfg.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    sbert: dict[str, Any] = {"max_seq_length": cfg.max_length, "do_lower_case": False}
    if _accepts_pooling_flag(hf_config):
        sbert["model_args"] = {"add_pooling_layer": False}
    st_config = {
        "prompts": {"query": cfg.query_prefix, "passage": cfg.passage_prefix, "document": cfg.passage_prefix},
        "default_prompt_name": DEFAULT_PROMPT,
        "similarity_fn_name": "cosine" if cfg.normalize else "dot",
        "model_type": "SentenceTransformer",
    }
    return {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": sbert,
        "config_sentence_transformers.json": st_config,
    }


def write_st_files(model_dir: str | Path) -> list[Path]:
    """Write the sentence-transformers files into ``model_dir`` (call it on a copy being built).

    Not atomic by itself on purpose: callers write into the temporary directory of an
    ``atomic_dir`` (see :mod:`hybrid_ray.export.bundle`), which publishes the export whole.
    """
    model_dir = Path(model_dir)
    configs = st_configs(model_dir)
    written = []
    for rel, obj in configs.items():
        path = model_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    if any(m["path"] == "2_Normalize" for m in configs["modules.json"]):
        (model_dir / "2_Normalize").mkdir(exist_ok=True)
        written.append(model_dir / "2_Normalize")
    return written
