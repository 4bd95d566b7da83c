"""RtrecPeer: rtrec's SLIM under the baselines' conventions, on hand-made sessions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.baselines import SessionBaseline
from models.rtrec_peer import RtrecPeer

ROOT = Path(__file__).resolve().parents[2]

# Counts: c 9, a 5, b 5, d 4, e 2, f 1 -> POP c, a, b, d, e, f (a/b tied: by id).
# a and b always come together; c is the most popular but never with a or b.
TRAIN = [["a", "b"]] * 5 + [["c", "d"]] * 4 + [["c"]] * 3 + [["c", "e"]] * 2 + [["f"]]
POP = ["c", "a", "b", "d", "e", "f"]


@pytest.fixture(scope="module")
def peer() -> RtrecPeer:
    model = RtrecPeer()
    model.fit(TRAIN, list(range(len(TRAIN))))
    return model


def test_it_is_a_session_baseline(peer: RtrecPeer) -> None:
    assert isinstance(peer, SessionBaseline)
    assert peer.name == "rtrec"


def test_learns_co_occurrence_over_popularity(peer: RtrecPeer) -> None:
    assert peer.recommend(["a"], 1, exclude={"a"}) == ["b"]
    assert peer.recommend(["b"], 1, exclude={"b"}) == ["a"]
    assert peer.recommend(["d"], 1, exclude={"d"}) == ["c"]
    # e's session partner c first, then POP fills the rest in popularity order.
    assert peer.recommend(["e"], 6, exclude={"e"}) == ["c", "a", "b", "d", "f"]


def test_excluded_items_never_returned_and_k_respected(peer: RtrecPeer) -> None:
    for prefix in (["a"], ["c", "d"], ["f"], [], ["zz"]):
        for k in (0, 1, 3, 6, 50):
            exclude = {*prefix, "c"}
            out = peer.recommend(prefix, k, exclude=exclude)
            assert not set(out) & exclude
            assert len(out) == len(set(out)) == min(k, len(set(POP) - exclude))
            assert set(out) <= set(POP)  # only training items, never invented ones


def test_unknown_prefix_items_are_dropped(peer: RtrecPeer) -> None:
    assert peer.recommend(["a", "zz"], 3) == peer.recommend(["a"], 3)
    # No known item at all: plain POP.
    assert peer.recommend(["zz"], 4) == POP[:4]
    assert peer.recommend([], 4, exclude={"zz"}) == POP[:4]


def test_lists_are_filled_with_popular_items(peer: RtrecPeer) -> None:
    # f never shared a session, so nothing is scored for it: all POP, minus the exclusion.
    assert peer.recommend(["f"], 3, exclude={"f"}) == POP[:3]
    assert peer.recommend(["a"], 6, exclude={"a"}) == ["b", "c", "d", "e", "f"]


def test_query_last_item_or_whole_session() -> None:
    last = RtrecPeer(query="last")
    session = RtrecPeer(query="session")
    for model in (last, session):
        model.fit(TRAIN)
    # The last known item, f, has no weights: "last" falls back to POP, while "session" still
    # scores a's partner b first.
    assert last.recommend(["a", "f"], 2, exclude={"a", "f"}) == ["c", "b"]
    assert session.recommend(["a", "f"], 2, exclude={"a", "f"}) == ["b", "c"]


def test_empty_training_set_and_unfitted_model() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        RtrecPeer().recommend(["a"], 3)
    empty = RtrecPeer()
    empty.fit([])
    assert empty.recommend(["a"], 3) == []


def test_bad_arguments() -> None:
    for kwargs in (
        {"regularisation": 0.0},
        {"l1_ratio": 1.5},
        {"neighbours": 0},
        {"query": "first"},
    ):
        with pytest.raises(ValueError):
            RtrecPeer(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timestamps"):
        RtrecPeer().fit(TRAIN, [0])


def test_missing_rtrec_raises_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import rtrec...` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "rtrec", None)
    monkeypatch.setitem(sys.modules, "rtrec.models", None)
    with pytest.raises(ImportError, match=r"pip install 'streamrec\[eval\]'"):
        RtrecPeer().fit(TRAIN)


def test_importing_the_module_does_not_need_rtrec() -> None:
    code = (
        "import sys; sys.modules['rtrec'] = None; import models.rtrec_peer; "
        "print(models.rtrec_peer.RtrecPeer().name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "rtrec"
