"""The clinical services: each joins a hook to the Engine and the card builder.

Importing this package registers them into `cds_plugin.hooks.registry.default_registry`. They arrive
with the model and cards work; until then the service offers discovery with no services.
"""
