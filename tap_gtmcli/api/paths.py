"""The API's paths, with a job id always one percent-encoded path segment.

Job ids are opaque strings. The SDK's path templating escapes only `/`: an id such as
`a?b` cut the path at `?`, and `..` took the request out of `/v1/jobs/` altogether.
"""

from __future__ import annotations

from urllib.parse import quote

JOBS = "/v1/jobs"


def job_segment(job_id: object) -> str:
    """`job_id` (a number is read as its digits) as one path segment: every reserved
    character encoded, and a segment of dots (`.`, `..`) too, so nothing resolves it."""
    segment = quote(str(job_id), safe="")
    return segment.replace(".", "%2E") if set(segment) == {"."} else segment


def job_path(job_id: object, tail: str = "") -> str:
    """`/v1/jobs/{id}` or `/v1/jobs/{id}/{tail}`, the id encoded."""
    path = f"{JOBS}/{job_segment(job_id)}"
    return f"{path}/{tail}" if tail else path
