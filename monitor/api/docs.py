"""The OpenAPI page at `/docs` with Swagger UI's own files: it works without the internet.

FastAPI's default page loads Swagger UI from a CDN, so on a utility's closed network it
is blank. Here the files come from the `swagger-ui-bundle-v2` package (Swagger UI 5,
which reads OpenAPI 3.1) and are served under `/docs/assets/` (FastAPI's recipe for
self-hosted docs).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"


def add_docs(app: FastAPI) -> None:
    """Serve `/docs` (and its OAuth2 redirect) from the packaged Swagger UI files.

    The app is built with `docs_url=None` so that FastAPI's CDN page is not registered.
    """
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} · API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            oauth2_redirect_url=OAUTH2_REDIRECT,
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
