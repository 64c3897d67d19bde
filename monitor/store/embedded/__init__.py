"""The embedded telemetry store (SQLite): `EmbeddedStore` and its layout version."""

from monitor.store.embedded.layout import LAYOUT
from monitor.store.embedded.store import EmbeddedStore

__all__ = ["LAYOUT", "EmbeddedStore"]
