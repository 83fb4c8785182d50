"""spooler: report lightweight event metadata to EventEngine Cloud through a durable local spool.

Typical use::

    import spooler
    spooler.configure()          # reads EVENT_ENGINE_CLOUD_KEY and friends
    spooler.start()              # does nothing at all without a key
    spooler.track_emit({"event_name": "order.placed", "event_id": 42})

The public surface is what a host imports: the lifecycle and ``track_*`` calls
(``reporter.__all__``), :class:`Config`, the exception tree (``errors.__all__``)
and ``__version__``; ``tests/test_public_api.py`` pins it. The building blocks
(``spooler.spool``, ``spooler.shipper``, ``spooler.client``, ...) and the dev tools
(``spooler.receiver``, ``spooler.demo``) are imported from their own modules.

Importing spooler is cheap: the HTTP stack (httpx) loads only when a shipper starts.
"""

# No `from __future__ import annotations`: nothing here is annotated, and it would leave a
# public name, `annotations`, in the package.
from spooler import errors, reporter
from spooler._version import __version__
from spooler.config import Config
from spooler.errors import *  # noqa: F403  (the names of errors.__all__)
from spooler.reporter import *  # noqa: F403  (the names of reporter.__all__)

# Each module lists its own public names once; these forms of __all__ are the ones
# type checkers read (the typing spec's "library interface").
__all__ = ["Config", "__version__"]
__all__ += errors.__all__
__all__ += reporter.__all__
