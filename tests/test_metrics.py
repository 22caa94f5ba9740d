"""cds_plugin.metrics: what each recording function counts, bounded labels, and multi-process mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cds_plugin import metrics


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_single_process_mode_without_the_variable():
    if metrics.multiprocess_dir():
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is set in the test environment")
    assert metrics.mode_consistent()
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"process_resident_memory_bytes" in body  # the process collector answers in this mode
    assert b"cds_plugin_worker_" not in body and b"_created" not in body


def test_openmetrics_when_asked_for():
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_completeness_histogram_and_flag():
    before = value("cds_plugin_explanation_completeness_flagged_total", method="m1")
    count = value("cds_plugin_explanation_completeness_error_count", method="m1")
    metrics.explanation("m1", 0.01)
    metrics.explanation("m1", 0.2)
    metrics.explanation("m1", None)  # a relevance method: counted, no completeness
    assert value("cds_plugin_explanation_completeness_flagged_total", method="m1") == before + 1
    assert value("cds_plugin_explanation_completeness_error_count", method="m1") == count + 2
    assert value("cds_plugin_explanation_completeness_error_bucket", method="m1", le="0.05") >= 1
    assert value("cds_plugin_explanations_total", method="m1") >= 3


def test_unknown_vocabulary_is_bounded():
    metrics.background_explanation("done")
    metrics.background_explanation("anything else")
    metrics.cards_issued("s", ["info", "weird"], None)
    metrics.feedback_items("s", [("accepted", "v1"), ("bogus", None)])
    assert value("cds_plugin_background_explanations_total", outcome="done") >= 1
    assert value("cds_plugin_background_explanations_total", outcome="unknown") >= 1
    assert value("cds_plugin_background_explanations_total", outcome="anything else") == 0
    assert value("cds_plugin_cards_issued_total", service="s", indicator="unknown", model_version="unknown")
    assert value("cds_plugin_feedback_items_total", service="s", outcome="accepted", model_version="v1")
    assert value("cds_plugin_feedback_items_total", service="s", outcome="unknown", model_version="unknown")


def test_multiprocess_values_are_summed_over_processes(tmp_path):
    """Two processes write values; a third sums them. Also: prometheus_client imported before the
    variable was set is switched to multi-process values by importing cds_plugin.metrics."""
    script = textwrap.dedent(
        """
        import os, sys
        import prometheus_client  # imported first, without the variable
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
        from cds_plugin import metrics
        assert metrics.mode_consistent()
        if sys.argv[2] == "write":
            metrics.hook_call("svc", "patient-view", 200, 0.3)
            metrics.model_loaded("v9")
        else:
            print(metrics.exposition()[0].decode())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script, str(tmp_path), "write"], check=True, env=env)
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), "read"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert 'cds_plugin_hook_calls_total{hook="patient-view",service="svc",status="200"} 2.0' in out
    assert 'cds_plugin_hook_call_duration_seconds_bucket{le="0.5",service="svc"} 2.0' in out
    # livemax gauge: the writers' files stay until the arbiter marks them dead
    assert 'cds_plugin_model_info{model_version="v9"} 1.0' in out
    assert "cds_plugin_worker_resident_memory_bytes{pid=" in out
