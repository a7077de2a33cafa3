"""The forecasting end-to-end tests again, against a real PostgreSQL server (see conftest.py): predictor
and forecast rows, accuracy JSON (NaN-free), series imports and their snapshots."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.postgres

# Re-collected here, so they run with this folder's `settings` fixture (PostgreSQL).
from service.test_forecasting_service import (  # noqa: E402,F401
    test_automl_predictor_accuracy_forecast_query_and_export,
    test_bad_data_fails_the_job_with_a_clear_reason,
)
