"""The installed distribution's version, for ``__version__``, ``circuitry --version``, the webhook
``User-Agent`` and the OpenTelemetry meter."""

from __future__ import annotations

import functools

DISTRIBUTION = "circuitry-breaker"  # the name on PyPI ("circuitry" there is another project)


@functools.cache
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
