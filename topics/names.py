"""Topic names, partition counts and retention: the only place they are spelled.

Events are keyed by ``user_id`` so that one user's events stay in one partition, in order.
The item catalogue is keyed by ``item_id`` and kept forever (``retention.ms=-1``): it is the
record of every item's title, which a new worker or a rebuilt Redis can be re-fed from. One
partition keeps every update of an item in order, and a catalogue is low-volume.
``model-updates`` announces promoted model versions; each worker reads it in a consumer group
of its own, so every worker sees every announcement.
A deployment can prefix every name (``STREAMREC_TOPIC_PREFIX``) to run several isolated
pipelines (for example a replay) on one cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000
FOREVER = -1  # retention.ms: never delete


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as created by ``streamrec topics create``."""

    name: str
    partitions: int
    retention_ms: int
    description: str

    def prefixed(self, prefix: str) -> TopicSpec:
        return TopicSpec(prefix + self.name, self.partitions, self.retention_ms, self.description)


USER_EVENTS = TopicSpec(
    "user-events", 4, 7 * DAY_MS, "view/click/search/add_to_cart/purchase events, key=user_id"
)
RECOMMENDATIONS = TopicSpec(
    "recommendations", 4, 1 * DAY_MS, "one ranked Recommendation per trigger event, key=user_id"
)
DEAD_LETTERS = TopicSpec(
    "dead-letters", 1, 14 * DAY_MS, "events that failed validation, with the reason"
)

ITEM_CATALOGUE = TopicSpec(
    "item-catalogue",
    1,
    FOREVER,
    "one CatalogueItem (title, category, price) per item update, key=item_id",
)

MODEL_UPDATES = TopicSpec(
    "model-updates",
    1,
    7 * DAY_MS,
    "one ModelUpdate per promoted or rolled-back bundle version; every worker reads all",
)

# ``streamrec forget-user``: every worker and training agent reads every request (docs/security.md,
# "Privacy"). Short retention: a request names the user, and its readers act within seconds.
FORGET_REQUESTS = TopicSpec(
    "forget-requests",
    1,
    1 * DAY_MS,
    "one ForgetRequest per `streamrec forget-user`; every worker and training agent reads all",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    USER_EVENTS,
    RECOMMENDATIONS,
    DEAD_LETTERS,
    ITEM_CATALOGUE,
    MODEL_UPDATES,
    FORGET_REQUESTS,
)


def all_topics(prefix: str = "") -> tuple[TopicSpec, ...]:
    """Every topic the pipeline uses, with ``prefix`` applied."""
    return tuple(t.prefixed(prefix) for t in ALL_TOPICS)


def topic_names(prefix: str = "") -> tuple[str, str, str]:
    """(events, recommendations, dead letters) topic names with ``prefix`` applied."""
    return (
        prefix + USER_EVENTS.name,
        prefix + RECOMMENDATIONS.name,
        prefix + DEAD_LETTERS.name,
    )


def catalogue_topic(prefix: str = "") -> str:
    """The item catalogue topic name with ``prefix`` applied."""
    return prefix + ITEM_CATALOGUE.name


def model_updates_topic(prefix: str = "") -> str:
    """The model-updates topic name with ``prefix`` applied."""
    return prefix + MODEL_UPDATES.name


def forget_requests_topic(prefix: str = "") -> str:
    """The forget-requests topic name with ``prefix`` applied."""
    return prefix + FORGET_REQUESTS.name
