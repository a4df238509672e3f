"""The routes `cafe serve` adds to KServe's FastAPI app: the body limit, 4xx answers for every
:class:`~cafe.serving.requests.RequestError`, ``POST /v1/feedback`` and the OpenAI-compatible API."""

from __future__ import annotations


from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cafe.serving.openai_api import add_openai_routes
from cafe.serving.requests import BodyLimit, RequestError, feedback_body, json_body



async def request_error(_, err: RequestError) -> JSONResponse:
    return JSONResponse(status_code=err.status, content={"error": str(err)})


async def validation_error(_, err: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a body its models refuse (KServe's V2 route), without echoing the input back: an input
    such as ``Infinity`` cannot be written as JSON and would turn the answer into a 500."""
    where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors())
    return JSONResponse(status_code=422, content={"error": where or "invalid request body"})


def add_routes(app, service) -> None:
    """Register on ``app`` before KServe registers its own routes (so ``GET /v1/models`` answers both APIs)."""

    async def feedback(request: Request):
        """``{"request_id": ..., "chosen": <gallery id>}``; 404 (and nothing stored) for an unknown request id."""
        try:
            request_id, chosen = feedback_body(json_body(await request.body()), service.limits)
            return {"recorded": service.feedback(request_id, chosen)}
        except RequestError as err:
            return await request_error(request, err)

    app.add_middleware(BodyLimit, limit=service.limits.max_body_bytes)
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_api_route("/v1/feedback", feedback, methods=["POST"])
    add_openai_routes(app, service)
