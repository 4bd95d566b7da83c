"""A model bundle loaded for serving: retrieval index, ONNX scorer and the arrays the
pipeline needs, prepared once at load time so that nothing per-batch recomputes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import Bundle
from models.retrieval import Retriever
from models.scoring import Device, Scorer
from models.session_knn import SessionIndex

DEFAULT_HALF_LIFE_MS = 7 * 24 * 3600 * 1000.0
DEFAULT_EVENT_WEIGHTS = {"view": 1.0, "click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}


@dataclass(slots=True)
class BlendWeights:
    """How the served score combines the ranking signals of a candidate:

    ``neural * logit + covisit * log1p(co-visitation) + sequential * log1p(sequential rules)
    + knn * log1p(session kNN) + online * log1p(online co-visitation)``

    Chosen per model on the validation period (stream/train_job.py) and recorded in the
    bundle's metadata under ``blend``; a signal weighted 0 is not computed at serving time.
    """

    neural: float = 1.0
    covisit: float = 0.0
    sequential: float = 0.0
    knn: float = 0.0
    online: float = 0.0

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> BlendWeights:
        """``metadata["blend"]``; bundles written before it only carry ``covisit_blend``."""
        blend = metadata.get("blend")
        if isinstance(blend, dict):
            return cls(**{k: float(v) for k, v in blend.items() if k in cls.__dataclass_fields__})
        return cls(covisit=float(metadata.get("covisit_blend", 0.0)))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class ServingModel:
    """Everything ``stream.pipeline.recommend_batch`` reads from a model version.

    embeddings:            float32[N+1, D] raw item embeddings (row 0 = unknown, zeros)
    normalised_embeddings: float32[N+1, D] L2-normalised rows (row 0 stays zero)
    popular:               int64[P] item indices by descending popularity (cold start)
    """

    def __init__(self, bundle: Bundle, retriever: Retriever, scorer: Scorer) -> None:
        self.bundle = bundle
        self.retriever = retriever
        self.scorer = scorer
        self.version = bundle.version
        self.space_id = bundle.space_id
        self.item_ids = bundle.item_ids
        self.max_recent = bundle.max_recent
        self.dim = bundle.dim
        # How much each event type moves the user's vector: recorded with the model at
        # training time, so serving and training agree. Searches carry no item: weight 0.
        self.event_weights: dict[str, float] = dict(
            bundle.metadata.get("event_weights") or DEFAULT_EVENT_WEIGHTS
        )
        self.half_life_ms = float(bundle.metadata.get("half_life_ms", DEFAULT_HALF_LIFE_MS))
        self.covisit_neighbours = bundle.covisit_neighbours
        self.covisit_weights = bundle.covisit_weights
        self.sequential_neighbours = bundle.sequential_neighbours
        self.sequential_weights = bundle.sequential_weights
        self.session_index = bundle.session_index or SessionIndex.empty(bundle.n_items)
        # Encodes token-id searches into the item space (None: the bundle has none).
        self.token_encoder = bundle.token_encoder
        self.blend = BlendWeights.from_metadata(bundle.metadata)
        self.embeddings = np.ascontiguousarray(bundle.embeddings, dtype=np.float32)
        norms = np.linalg.norm(self.embeddings, axis=1, keepdims=True)
        self.normalised_embeddings = np.divide(
            self.embeddings, norms, out=np.zeros_like(self.embeddings), where=norms > 0
        )
        pop = np.asarray(bundle.popularity, dtype=np.float64).copy()
        pop[0] = -np.inf
        order = np.argsort(-pop, kind="stable")
        self.popular = order[: min(1000, len(order) - 1)].astype(np.int64)

    def indices_of(self, hashes: np.ndarray) -> np.ndarray:
        """Model indices ``int64[N]`` of item hashes ``uint64[N]`` (0 = unknown item)."""
        return self.bundle.indices_of(hashes)

    @classmethod
    def load(cls, path: Path, *, device: Device = "auto", threads: int = 1) -> ServingModel:
        """Load (checksums verified), build the retriever and the ONNX session, warm up."""
        bundle = Bundle.load(path)
        retriever = Retriever.load(bundle.index_path, threads=threads)
        scorer = Scorer(bundle.onnx_path, device=device, intra_op_threads=threads)
        scorer.warmup()
        return cls(bundle, retriever, scorer)
