"""The exemption workflow's place in the router: the id its paths take, and the redirect of a gateway whose
exemptions are another's (`exemptions.authority_url`: an agent's control plane) to that gateway. Its routes are
declared in gateway/routes.py."""

from __future__ import annotations

import orjson

from tollhouse.gateway.http import Request, Response, Streamed
from tollhouse.gateway.router import Handler
from tollhouse.gateway.state import GatewayState

EXEMPTION_ID = r"[A-Za-z0-9_-]{1,64}"  # what {id} matches in the workflow's paths


def elsewhere(request: Request, state: GatewayState) -> Response | None:
    """None on the gateway that holds the queue; elsewhere (an agent, exemptions.authority_url set) a 307 to the
    same path there, so a request is filed, read and decided in the one queue policy owners see."""
    authority = state.settings.exemptions.authority_url
    if not authority:
        return None
    query = f"?{request.query_string}" if request.query_string else ""
    location = f"{authority}{request.raw_path or request.path}{query}"
    body = orjson.dumps({"error": {"message": f"exemptions are filed and decided at {authority}: this "
                                   f"gateway's queue is not used; go to {location}",
                                   "code": "exemptions_elsewhere", "location": location}})
    return Response(307, body, [("location", location), ("content-type", "application/json")])


def at_authority(handler: Handler) -> Handler:
    """The handler, on the gateway that holds the queue; elsewhere a 307 there (see `elsewhere`)."""

    async def routed(request: Request, state: GatewayState) -> Response | Streamed:
        redirect = elsewhere(request, state)
        return redirect if redirect is not None else await handler(request, state)

    return routed
