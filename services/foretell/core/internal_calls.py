"""What the internal key may call: the RPCs the services make on each other, and nothing else.

The internal key (FORETELL_INTERNAL_API_KEY, or a per-process random one) is what peer channels
(core/peers.py) send. It is a credential for services, not for people: it passes every per-group check
(jobs act for the system long after the caller's call ended), so it must not be an admin key. The
AuthInterceptor (core/auth.py) answers PERMISSION_DENIED to the internal principal on any method not listed
here, whatever the request says.

Full gRPC method names ("/package.Service/Method"), each with who calls it. A new peer call adds its method
here; tests/service/test_internal_key.py checks both ways that this set is exactly what the peers call.
"""

from __future__ import annotations

INTERNAL_METHODS: frozenset[str] = frozenset(
    {
        # training (CreateSolution/CreatePredictor: the group exists and has the right domain,
        # training/servicer.py) and recommendation (CreateFilter: recommendation/campaigns.py
        # check_dataset_group) -> dataset
        "/foretell.v1.DatasetService/GetDatasetGroup",
        # training -> dataset: interactions present (CreateSolutionVersion) and the datasets a snapshot
        # exports (training/snapshot.py)
        "/foretell.v1.DatasetService/ListDatasets",
        # training -> dataset: the Parquet files of each dataset of a group a job reads (training/snapshot.py)
        "/foretell.v1.EventFeedService/SnapshotDataset",
        # recommendation -> dataset: the event feed of a deployed campaign (recommendation/events.py), on the
        # internal service (DatasetService.WatchEvents is deprecated: only a recommendation service older than
        # its dataset service would call it)
        "/foretell.v1.EventFeedService/WatchEvents",
        # recommendation -> training: the artifact and group of a version a campaign or batch job serves
        # (recommendation/campaigns.py SolutionVersions); GetSolution also for the auth GroupResolver
        "/foretell.v1.TrainingService/GetSolutionVersion",
        "/foretell.v1.TrainingService/GetSolution",
        # forecast-query -> training: the forecast's table (forecast_query/forecasts.py); also the GroupResolver
        "/foretell.v1.TrainingService/GetForecast",
        # auth GroupResolver (core/auth.py peer_resolver): a forecast's dataset group is its predictor's, asked when
        # a restricted caller queries a forecast on a forecast-query service apart
        "/foretell.v1.TrainingService/GetPredictor",
    }
)


# Peer calls of older releases, kept for a rolling upgrade: a recommendation service older than its dataset service
# still streams events through the deprecated public twin of the event feed. No current service calls these.
PREVIOUS_RELEASE_METHODS: frozenset[str] = frozenset({"/foretell.v1.DatasetService/WatchEvents"})


def internal_may_call(method: str) -> bool:
    """Whether the internal principal may call full method name `method` ("/package.Service/Method")."""
    return method in INTERNAL_METHODS or method in PREVIOUS_RELEASE_METHODS
