"""Thin, typed Python client for Foretell's gRPC services.

``Client`` owns one channel with deadlines and read-only retries configured, exposes
the generated stubs, and adds helpers for the common flows (create resources,
stream a CSV, wait for an operation, query). Failures raise ``ForetellError``,
which carries the server's structured ``google.rpc`` error details.
"""

from foretell.client._client import Client, operation_response
from foretell.client.errors import ERROR_DOMAIN, ForetellError, raise_for_operation

__all__ = ["ERROR_DOMAIN", "Client", "ForetellError", "operation_response", "raise_for_operation"]
