"""Events across processes: a bus (in-process, PostgreSQL LISTEN/NOTIFY, Redis pub/sub) and feeds of
numbered events on it (a run's, a thread turn's) that a follower in any process reads exactly once, in
order, from the database and then live."""

from __future__ import annotations

from .bus import MAYBE_LOST, EventBus, LocalBus, Subscription
from .choose import BusChoice, build_bus
from .feed import FeedPublisher, follow_feed

__all__ = ["MAYBE_LOST", "BusChoice", "EventBus", "FeedPublisher", "LocalBus", "Subscription", "build_bus",
           "follow_feed"]
