"""The price book's errors (rendered by facemint.problems like every other)."""

from __future__ import annotations

from facemint.errors import Conflict


class PriceChanged(Conflict):
    """A new version was confirmed against a price that has moved on since it was previewed."""

    code = "price_changed"
    title = "The price changed since the preview"
