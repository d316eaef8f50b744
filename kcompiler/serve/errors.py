"""Refusals of a request: an HTTP status and a message (and a hint) for the client, written as JSON
by the routes (kcompiler.serve.routes)."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, hint: str | None = None):
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


def bad_request(message: str, hint: str | None = None) -> ApiError:
    return ApiError(400, message, hint)


def too_large(limit: int, seen: str) -> ApiError:
    return ApiError(413, f"the request body is over the limit of {limit} bytes ({seen})",
                    hint="send large tensors with the binary data extension, or raise the limit "
                         "(kc serve --max-body-mb)")
