"""The clinical services: each joins a hook to the Engine and the card builder.

Importing this package registers them into `cds_plugin.hooks.registry.default_registry`.
"""

from cds_plugin.services import considerations  # noqa: F401 - registers the services
