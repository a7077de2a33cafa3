"""Thin, typed Python client for Foretell's gRPC services.

``Client`` owns one channel with deadlines and read-only retries configured, exposes
the generated stubs, and adds helpers for the common flows (create resources,
stream a CSV, wait for an operation, train a solution version, deploy a campaign,
recommend, rank, query). Failures raise ``ForetellError``, which carries the
server's structured ``google.rpc`` error details.

    with Client("127.0.0.1:50051") as client:
        solution = client.create_solution("movies", "datasetGroups/shop", "ease")
        version = client.train(solution, on_progress=lambda m: print(m.progress_percent, m.status_message))
        campaign = client.create_campaign("movies", version)
        items = client.get_recommendations(campaign.name, user_id="u1", num_results=10).item_list
"""

from foretell.client._client import Client, OperationTypes, operation_response, operation_types
from foretell.client.errors import ERROR_DOMAIN, ForetellError, raise_for_operation

__all__ = [
    "ERROR_DOMAIN",
    "Client",
    "ForetellError",
    "OperationTypes",
    "operation_response",
    "operation_types",
    "raise_for_operation",
]
