"""cds-plugin: a CDS Hooks 2.0 service for diagnosis and treatment considerations with explanations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Engine", "__version__"]

if TYPE_CHECKING:
    from cds_plugin.explain.engine import Engine


def __getattr__(name: str) -> Any:
    # imported lazily: `import cds_plugin` (the CLI, the web app) must not pay for torch unless needed
    if name == "Engine":
        from cds_plugin.explain.engine import Engine

        return Engine
    raise AttributeError(name)
