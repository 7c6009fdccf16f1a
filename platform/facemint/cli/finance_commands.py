"""`facemint finance ...` commands: filled in by the issue 5 work."""

from __future__ import annotations

from collections.abc import Callable

import click

from facemint.config import Settings


def register(cli: click.Group, settings: Callable[[], Settings]) -> None:
    return None
