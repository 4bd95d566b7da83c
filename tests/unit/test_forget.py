"""``streamrec forget-user`` without services: the request record, the per-user Redis keys,
and what a worker and the training agent erase from memory when a request reaches them."""

from __future__ import annotations

import inspect

import features
from features import keys
from features.traffic import RateBounds, TrafficMonitor
from models.ab import HitTracker, ImpressionTracker
from stream.cli import build_parser
from stream.forget import ForgetRequest, forget_in_worker, user_keys
from tests.unit.test_batch_handler import Sink, handler


def test_every_per_user_key_builder_is_erased() -> None:
    """A key builder of features/ that takes a ``user_id`` makes per-user data: forget-user
    must delete what it names (add it to ``stream.forget.user_keys``)."""
    import importlib
    import pkgutil

    builders = []
    for info in pkgutil.iter_modules(features.__path__):
        module = importlib.import_module(f"features.{info.name}")
        for _name, fn in inspect.getmembers(module, inspect.isfunction):
            params = list(inspect.signature(fn).parameters)
            if fn.__module__ == module.__name__ and params == ["namespace", "user_id"]:
                builders.append(fn)
    assert keys.user_key in builders
    for fn in builders:
        assert fn("ns", "u1") in user_keys("ns", "u1"), fn.__qualname__


def test_a_request_round_trips_and_malformed_ones_are_skipped() -> None:
    r = ForgetRequest("u1", "r1", 123)
    assert ForgetRequest.parse(r.to_bytes()) == r
    for bad in (None, b"", b"{", b"[]", b'{"user_id": "", "request_id": "r", "at_ms": 1}',
                b'{"user_id": "u", "request_id": "r", "at_ms": "1"}'):  # fmt: skip
        assert ForgetRequest.parse(bad) is None


def test_trackers_forget_one_user_only() -> None:
    hits = HitTracker(k=3)
    hits.recommended("x", "v1\t", ["a", "b"])
    hits.recommended("y", "v1\t", ["a"])
    assert hits.forget("x") and not hits.forget("x")
    assert hits.judge([("x", "a")]) == [] and len(hits.judge([("y", "a")])) == 1
    imps = ImpressionTracker()
    imps.impressed("x", ("v1", ""), ["a"])
    imps.impressed("y", ("v1", ""), ["a"])
    assert imps.forget("x") and not imps.forget("x")
    assert imps.interacted("x", "a") is None and imps.interacted("y", "a") == ("v1", "")


class FakeRedis:
    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data

    async def delete(self, *names: str) -> int:
        return sum(self.data.pop(n, None) is not None for n in names)


async def test_a_worker_erases_the_user_from_its_trackers_and_redis() -> None:
    h = handler(Sink())
    h.store = type("S", (), {"namespace": "ns"})()  # type: ignore[assignment]
    redis = FakeRedis({keys.user_key("ns", "x"): b"state", keys.user_key("ns", "y"): b"state"})
    h.store.client = redis  # type: ignore[attr-defined]
    h.tracker.recommended("x", "v1\t", ["a"])
    h.impressions.impressed("x", ("v1", ""), ["a"])
    h.tracker.recommended("y", "v1\t", ["a"])
    h.traffic = TrafficMonitor(RateBounds(user=2, session=0, item=0))
    for t in range(3):
        h.traffic.check("x", "s", None, t)
        h.traffic.check("y", "s", None, t)
    out = await forget_in_worker(h, "x")
    assert (out.redis_keys, out.hit_lists, out.impressions, out.rate_counters) == (1, 1, 1, 1)
    assert list(redis.data) == [keys.user_key("ns", "y")]
    assert list(h.tracker._last) == ["y"] and h.impressions.pending == 0
    user_counter = h.traffic.counters["user"]
    assert user_counter.rate("x", 3) == 0 and user_counter.rate("y", 3) > 0
    assert user_counter.flagged() == 1  # y, still flooding; x's flag went with its counts


def test_the_cli_has_forget_user() -> None:
    args = build_parser().parse_args(["forget-user", "alice", "--pseudonymised"])
    assert args.user_id == "alice" and args.pseudonymised
