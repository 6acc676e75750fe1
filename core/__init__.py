"""archforge core: search spaces, strategies, evaluators, journal and engine.

`core` never imports `tasks`; tasks register their spaces, datasets and
modules into the registries of `core.engine.registry` when imported.
"""

__version__ = "0.1.0"
