"""Reading an HTML form body (application/x-www-form-urlencoded) without a multipart parser."""

from __future__ import annotations

import urllib.parse

from fastapi import Request

from taskfabric.forwarder.requests import invalid

__all__ = ["MAX_FORM_BYTES", "read_form"]

#: the dashboard's forms carry a token, a CSRF token and a path: a few hundred bytes
MAX_FORM_BYTES = 16 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """The form's fields (the first value of each); 400 naming the problem for a body that is too
    large or not a form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise invalid(f"expected a form (application/x-www-form-urlencoded), got {content_type[:64]!r}")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise invalid(f"the form is {len(body)} bytes, above the limit of {MAX_FORM_BYTES}")
    try:
        fields = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise invalid("the form is not valid UTF-8 form data") from None
    return {name: values[0] for name, values in fields.items()}
