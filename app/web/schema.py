"""The OpenAPI description of the upload routes, which FastAPI cannot infer from their raw-Request handlers.

Each route's form comes from its form model (app/web/forms.py), so /openapi.json tells clients and
schema-driven testers (schemathesis) exactly the fields that are validated, the error statuses a route
may answer with, and how to present the API key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.web.errors import REFUSALS
from app.web.forms import UploadForm

FILE = {"type": "string", "format": "binary", "description": "audio or video; its content, not its name, decides"}


def form_schema(form: type[UploadForm]) -> dict[str, Any]:
    """The multipart schema of one route: the audio file and the form model's text fields."""
    fields = form.model_json_schema(by_alias=True, mode="validation")
    properties = {"file": FILE, **fields.get("properties", {})}
    for name, field in properties.items():
        field.pop("title", None)
        # pydantic marks no-default fields required; in a multipart form only the file must be there
        if name != "file":
            field.pop("default", None)
    return {"type": "object", "properties": properties, "required": ["file"]}


def error_responses() -> dict[str, dict[str, str]]:
    """Every status an upload may fail with, each described by the reasons that produce it and what they mean."""
    reasons: dict[int, list[str]] = {}
    for reason, refusal in REFUSALS.items():
        reasons.setdefault(refusal.status, []).append(f"{reason.value} ({refusal.meaning})")
    return {str(status): {"description": "reason: " + "; ".join(names)} for status, names in sorted(reasons.items())}


def upload_operation(operation: dict[str, Any], form: type[UploadForm]) -> None:
    operation["requestBody"] = {
        "required": True,
        "content": {"multipart/form-data": {"schema": form_schema(form)}},
    }
    operation["responses"].update(error_responses())


def describe_uploads(
    app: FastAPI, forms: Mapping[str, type[UploadForm]], open_paths: frozenset[str] | None
) -> Callable[[], dict[str, Any]]:
    """A replacement for `app.openapi` that adds the upload forms, and the API key unless `open_paths` is None."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path, form in forms.items():
                upload_operation(document["paths"][path]["post"], form)
            if open_paths is not None:
                document.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                }
                document["security"] = [{"bearer": []}, {"apiKey": []}]
                for path in open_paths & document["paths"].keys():
                    for operation in document["paths"][path].values():
                        operation["security"] = []
            app.openapi_schema = document
        return app.openapi_schema

    return openapi
