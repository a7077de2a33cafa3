from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api

from support import Stubs, interactions_csv, make_recommendation_group, upload


def test_streamed_import_makes_rows_visible(stubs: Stubs) -> None:
    group = make_recommendation_group(stubs)
    op = stubs.wait(upload(stubs, group.interactions, interactions_csv(500)))
    assert op.HasField("response"), op.error
    job = pb.ImportJob()
    op.response.Unpack(job)
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.rows_imported == 500
    assert stubs.datasets.GetDataset(api.GetDatasetRequest(name=group.interactions), timeout=5).row_count == 500
