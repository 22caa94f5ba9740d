"""Flask app factory: wires settings, services, database, client trust and the blueprints.

Called once per gunicorn worker (no preload), so each worker loads its services' heavy objects once.
"""

from __future__ import annotations

import logging
import traceback

import requests
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from cds_plugin.errors import CdsPluginError
from cds_plugin.hooks.registry import ServiceRegistry, default_registry
from cds_plugin.settings import SANDBOX_ISSUER, Settings
from cds_plugin.storage.card_log import CardLog
from cds_plugin.storage.database import Database
from cds_plugin.storage.explanation_store import ExplanationStore
from cds_plugin.storage.feedback_store import FeedbackStore
from cds_plugin.storage.override_store import OverrideStore
from cds_plugin.storage.pseudonym import Pseudonymizer
from cds_plugin.storage.replay_cache import DatabaseReplayCache
from cds_plugin.web import cds_services, explanation_view, health, metrics, model_card
from cds_plugin.web.cors import install_cors
from cds_plugin.web.link_tokens import LinkSigner, load_secret
from cds_plugin.web.openapi import bp as openapi_bp
from cds_plugin.web.operation_outcome import error_response, outcome_response
from cds_plugin.web.runtime import Runtime

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


def create_app(settings: Settings | None = None, registry: ServiceRegistry | None = None) -> Flask:
    """Build the app. Without a registry, the product's clinical services (cds_plugin.services) are used."""
    settings = settings or Settings.load()
    db = Database(settings.effective_database_url)
    db.migrate()
    explanation_store = ExplanationStore(db, settings.explanation_ttl_s)
    link_signer = LinkSigner(load_secret(settings.link_secret, settings.data_dir))
    pseudonymizer = Pseudonymizer(
        load_secret(settings.pseudonym_secret, settings.data_dir, "pseudonym_secret")
    )
    override_store = OverrideStore(db)
    if registry is None:
        from cds_plugin.services import considerations  # registers the clinical services

        considerations.configure(
            considerations.ServiceEnvironment(settings, explanation_store, link_signer, override_store)
        )
        registry = default_registry
    registry.validate()

    trust = None
    if settings.jwt_required:
        from cds_plugin.hooks.jwt_trust import ClientTrust

        trust = ClientTrust.from_settings(settings, DatabaseReplayCache(db))
        if not settings.issuers:
            log.warning("JWT is required but no trusted issuers are configured: every call will get 401")
        if any(i.iss == SANDBOX_ISSUER for i in settings.issuers):
            log.warning(
                "trusting the public CDS Hooks sandbox (%s): its signing key is public; development only",
                SANDBOX_ISSUER,
            )
    else:
        log.warning(
            "JWT client authentication is switched off (CDS_PLUGIN_JWT_REQUIRED=false): development only"
        )

    for service in registry:
        service.ensure_loaded()

    app = Flask("cds_plugin")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["cds_plugin"] = Runtime(
        settings=settings,
        registry=registry,
        db=db,
        feedback_store=FeedbackStore(db),
        card_log=CardLog(db),
        override_store=override_store,
        pseudonymizer=pseudonymizer,
        explanation_store=explanation_store,
        link_signer=link_signer,
        trust=trust,
        http=requests.Session(),
    )
    app.register_blueprint(health.bp)
    app.register_blueprint(cds_services.bp)
    app.register_blueprint(model_card.bp)
    app.register_blueprint(openapi_bp)  # /openapi.json
    metrics.install(app)  # /metrics, when metrics_enabled
    explanation_view.install(app)  # before CORS: its security headers run last on its pages
    install_cors(app, settings.cors_origins)

    @app.errorhandler(CdsPluginError)
    def on_cds_error(exc: CdsPluginError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = outcome_response(
            status, exc.description or exc.name, _HTTP_CODES.get(status, "processing")
        )
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        # log where it happened, not the message: messages may quote patient data
        frames = traceback.extract_tb(exc.__traceback__)
        where = " <- ".join(
            f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames[-6:])
        )
        log.error("internal error %s at %s", type(exc).__name__, where)
        return outcome_response(
            500, "internal error; the service could not complete the request", "exception"
        )

    return app
