"""The web dashboard the coordinator serves at ``/`` (docs/dashboard.md).

``Feed`` (feed.py) is the part that notices changes and pushes them to open streams;
``install`` (routes.py) adds the page, its static files and ``/api/v1/stream`` to the API;
``led_of`` (ledview.py) draws a node's LED the way the agent and the firmware light it.
"""

from .feed import Feed
from .ledview import LedView, led_of
from .routes import install

__all__ = ["Feed", "LedView", "install", "led_of"]
