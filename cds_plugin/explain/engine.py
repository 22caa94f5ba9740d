"""The Engine with explanations: `cds_plugin.Engine`, what services, the CLI and users load.

    from cds_plugin import Engine
    engine = Engine.load()
    assessment = engine.assess(bundle)
    explanation = engine.explain(assessment, assessment.diagnoses[0])

The model's Engine (cds_plugin/model/engine.py) predicts; this subclass adds `explain`, so the model
package never imports the explanation package.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from cds_plugin.explain import DEFAULT_METHOD, explain
from cds_plugin.explain.explanation import Explanation
from cds_plugin.model.engine import Engine as ModelEngine


class Engine(ModelEngine):
    """A loaded model: assess, assess_many and explain."""

    def explain(
        self,
        source: Any,
        target: Any,
        method: str = DEFAULT_METHOD,
        as_of: datetime | date | None = None,
        **settings: Any,
    ) -> Explanation | list[Explanation]:
        """Explain a Consideration or code (or a list: they share work) for `source`; see cds_plugin.explain.

        Returns an Explanation, or a list of them (same order) when `target` is a list.
        """
        return explain(self, source, target, method=method, as_of=as_of, **settings)
