"""Compressed variants of a bundle (models/compress.py, models/distill.py): each is a valid
bundle in the parent's embedding space that serving loads unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from models.bundle import (  # noqa: E402
    EMBEDDINGS_FILE,
    MANIFEST_FILE,
    MODEL_DATA_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    Bundle,
    sha256_file,
    verify_bundle,
)
from models.compress import (  # noqa: E402
    CompressionError,
    compress_bundle,
    model_bytes,
    session_examples,
    sessions_of,
)
from models.distill import DistillConfig, n_parameters, teacher_tables  # noqa: E402
from models.export import train_bundle  # noqa: E402
from models.ranker import SessionRanker  # noqa: E402
from models.retrieval import Retriever  # noqa: E402
from models.scoring import Scorer  # noqa: E402
from models.serving import ServingModel  # noqa: E402
from models.training import TrainConfig  # noqa: E402
from topics.events import EventType, UserEvent  # noqa: E402

N, D, R = 30, 8, 6
TINY_STUDENT = DistillConfig(hidden=4, window=3, epochs=3, batch_size=64, n_near=10, n_random=6)


def _sessions(seed: int = 0, n: int = 80) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):  # short walks over neighbouring items: something to learn
        start = int(rng.integers(1, N + 1))
        steps = rng.integers(-2, 3, size=int(rng.integers(2, 8)))
        out.append([int((start - 1 + s) % N) + 1 for s in np.cumsum(steps)])
    return out


@pytest.fixture(scope="module")
def sessions() -> list[list[int]]:
    return _sessions()


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, sessions: list[list[int]]) -> Path:
    torch.set_num_threads(1)
    popularity = np.zeros(N + 1, np.float32)
    for s in sessions:
        np.add.at(popularity, s, 1.0)
    return train_bundle(
        [f"i{i}" for i in range(1, N + 1)],
        sessions,
        popularity,
        tmp_path_factory.mktemp("models"),
        cfg=TrainConfig(dim=D, max_recent=R, epochs=2, seed=1),
        version="parent",
    )


def _feeds(seed: int = 0, batch: int = 16, width: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    recent = rng.integers(0, N + 1, (batch, R))
    return {
        "recent": recent,
        "user_vec": rng.normal(size=(batch, D)).astype(np.float32),
        "candidates": rng.integers(1, N + 1, (batch, width)),
    }


def _assert_variant_of(path: Path, parent: Path, variant: str) -> Bundle:
    verify_bundle(path)
    child, base = Bundle.load(path), Bundle.load(parent)
    meta = child.metadata
    assert meta["variant"] == variant and meta["variant_of"] == base.version
    assert meta["derived_from"] == base.version and meta["version"] == path.name != base.version
    assert (child.space_id, meta["space"]) == (base.space_id, base.metadata["space"])
    assert sha256_file(path / EMBEDDINGS_FILE) == sha256_file(parent / EMBEDDINGS_FILE)
    assert child.item_ids == base.item_ids
    assert "metrics" not in meta and "metrics" in meta["compression"]["parent_metrics"]
    files = orjson.loads((path / MANIFEST_FILE).read_bytes())["files"]
    parent_files = orjson.loads((parent / MANIFEST_FILE).read_bytes())["files"]
    assert files[MODEL_FILE]["sha256"] != parent_files[MODEL_FILE]["sha256"]
    own = {MODEL_FILE, MODEL_DATA_FILE, "metadata.json"}  # the graph and its weights are new
    for name in set(files) - own:  # everything else: the parent's
        assert files[name] == parent_files[name], name
    # The data file is the one written with the new graph (the student's holds the teacher's
    # frozen item tables, so it may equal the parent's); a graph saved inline has none.
    assert (MODEL_DATA_FILE in files) == (path / MODEL_DATA_FILE).is_file()
    assert 0 < meta["compression"]["model_bytes"] == model_bytes(path / MODEL_FILE)
    return child


@pytest.mark.parametrize("variant", ["fp16", "int8-dynamic", "int8-static"])
def test_quantised_variant_is_a_verified_bundle_in_the_parents_space(
    parent: Path, sessions: list[list[int]], variant: str
) -> None:
    path = compress_bundle(parent, variant, sessions=sessions)
    _assert_variant_of(path, parent, variant)
    assert (path / WEIGHTS_FILE).is_file() == (parent / WEIGHTS_FILE).is_file()
    served = ServingModel.load(path, device="cpu")  # the worker loads it like any bundle
    assert served.space_id == Bundle.load(parent).space_id
    assert served.scorer.score(**_feeds()).shape == (16, 12)


def test_int8_dynamic_scores_close_to_fp32(parent: Path) -> None:
    path = compress_bundle(parent, "int8-dynamic")  # no sessions: checked on seeded rows
    feeds = _feeds(seed=3, batch=32, width=20)
    ref = Scorer(parent / MODEL_FILE, device="cpu").score(**feeds)
    got = Scorer(path / MODEL_FILE, device="cpu").score(**feeds)
    assert np.max(np.abs(got - ref)) < 0.05 * max(float(np.std(ref)), 1e-3) + 0.02
    info = Bundle.load(path).metadata["compression"]
    assert info["max_abs_diff_vs_parent"] < 0.1  # (smaller file only on real catalogues)


def test_student_is_smaller_keeps_the_space_and_serves(
    parent: Path, sessions: list[list[int]]
) -> None:
    path = compress_bundle(parent, "student", sessions=sessions, student=TINY_STUDENT)
    child = _assert_variant_of(path, parent, "student")
    info = child.metadata["compression"]
    assert info["parameters"] < info["parent_parameters"]
    assert info["parameters_without_item_tables"] < info["parent_parameters_without_item_tables"]
    assert info["config"]["hidden"] == 4 and info["onnx_parity_max_abs_diff"] < 1e-4
    assert not (path / WEIGHTS_FILE).exists()  # the parent's torch weights are not the student
    served = ServingModel.load(path, device="cpu")
    assert (served.scorer.max_recent, served.scorer.dim) == (R, D)
    scores = served.scorer.score(**_feeds())
    assert scores.shape == (16, 12) and np.isfinite(scores).all()
    teacher = SessionRanker(N, D, R)
    assert n_parameters(teacher) > info["parameters"]


def test_teacher_tables_from_weights_or_from_the_onnx_graph(parent: Path, tmp_path: Path) -> None:
    bias, repeat = teacher_tables(Bundle.load(parent))
    assert bias.shape == (N + 1,) and repeat.shape == (R,) and bias[0] == 0.0
    copy = tmp_path / "noweights"
    shutil.copytree(parent, copy)
    (copy / WEIGHTS_FILE).unlink(missing_ok=True)
    manifest = orjson.loads((copy / MANIFEST_FILE).read_bytes())
    manifest["files"].pop(WEIGHTS_FILE, None)
    (copy / MANIFEST_FILE).write_bytes(orjson.dumps(manifest))
    bias2, repeat2 = teacher_tables(Bundle.load(copy))
    np.testing.assert_allclose(bias2, bias, atol=1e-7)
    np.testing.assert_allclose(repeat2, repeat, atol=1e-7)


def test_session_examples_are_real_serving_inputs(parent: Path, sessions: list[list[int]]) -> None:
    bundle = Bundle.load(parent)
    ex = session_examples(
        sessions, bundle.embeddings, Retriever.load(bundle.index_path), bundle.popularity,
        max_recent=R, n_near=5, n_random=3, max_examples=50,
    )  # fmt: skip
    assert ex.recent.shape == (50, R) and ex.candidates.shape == (50, 8)
    assert ex.user_vec.shape == (50, D) and (ex.candidates > 0).all()
    assert (ex.recent[:, -1] > 0).all()  # left-padded: the newest item is the last column
    newest = bundle.embeddings[ex.recent[:, -1]]
    assert np.all(np.einsum("bd,bd->b", ex.user_vec, newest) != 0)


def test_refusals(parent: Path, sessions: list[list[int]]) -> None:
    with pytest.raises(CompressionError, match="unknown variant"):
        compress_bundle(parent, "int4")
    with pytest.raises(CompressionError, match="needs the training sessions"):
        compress_bundle(parent, "int8-static")
    with pytest.raises(CompressionError, match="needs the training sessions"):
        compress_bundle(parent, "student")
    fp16 = compress_bundle(parent, "fp16")
    with pytest.raises(CompressionError, match="already a fp16 variant"):
        compress_bundle(fp16, "int8-dynamic")


def test_sessions_of_maps_events_onto_the_catalogue() -> None:
    def ev(i: int, session: str, item: str | None, ts: int) -> UserEvent:
        kind = EventType.VIEW if item else EventType.SEARCH
        return UserEvent(f"e{i}", kind, "u", session, ts, item_id=item,
                         query=None if item else "q")  # fmt: skip

    events = [ev(0, "s1", "b", 20), ev(1, "s1", "a", 10), ev(2, "s1", "zz", 15),
              ev(3, "s1", None, 16), ev(4, "s2", "a", 5), ev(5, "s3", "c", 1),
              ev(6, "s3", "c", 2)]  # fmt: skip
    assert sessions_of(events, ["a", "b", "c"]) == [[1, 2], [3, 3]]


def test_cli_compress_writes_a_variant_that_promotes(
    parent: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.cli import main

    root = str(parent.parent)
    assert main(["models", "--model-dir", root, "compress", "parent", "--variant", "fp16"]) == 0
    out = capsys.readouterr().out
    version = out.split("fp16 of parent: ")[1].split()[0]
    assert "streamrec models promote" in out
    _assert_variant_of(parent.parent / version, parent, "fp16")
    assert main(["models", "--model-dir", root, "compress", "nope", "--variant", "fp16"]) == 2
