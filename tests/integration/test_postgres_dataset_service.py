"""The dataset service tests again, against a real PostgreSQL server (see conftest.py)."""

from __future__ import annotations

import pytest

from foretell.core.settings import Settings

from support import Stubs

pytestmark = pytest.mark.postgres

# Re-collected here, so they run with this folder's `settings` fixture (PostgreSQL).
from service.test_dataset_service import (  # noqa: E402,F401
    files,
    group,
    test_create_get_list_delete_dataset_groups,
    test_create_request_id_is_idempotent,
    test_dataset_rules,
    test_failed_import_leaves_dataset_unchanged,
    test_full_replaces_and_incremental_appends,
    test_health_and_restart_recovery,
    test_import_from_uri_and_export_round_trip,
    test_import_reports_progress_and_can_be_cancelled,
    test_import_request_id_returns_first_operation,
    test_items_incremental_import_replaces_same_ids,
    test_put_events_bad_input_stores_nothing,
    test_put_events_is_idempotent_on_event_id,
    test_put_items_and_users,
)


def test_really_on_postgres(stubs: Stubs, settings: Settings) -> None:
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert stubs.app.engine.dialect.name == "postgresql"
