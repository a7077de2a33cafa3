"""Long-running work with progress bars: CSV upload, then the server-side job, then its result."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
from google.longrunning import operations_pb2
from tqdm import tqdm

from foretell.client import Client, ForetellError, operation_response
from foretell.v1 import common_pb2
from foretell.v1 import dataset_pb2 as pb

_JOB_BAR = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]"


def wait_with_progress(
    client: Client, operation: operations_pb2.Operation | str, *, desc: str, show: bool, poll: float = 0.1
) -> operations_pb2.Operation:
    """Polls the operation until done, driving a 0-100% bar from OperationMetadata.progress_percent.

    Ctrl-C stops waiting, not the job: the hint says how to follow or cancel it.
    """
    name = operation if isinstance(operation, str) else operation.name
    with tqdm(total=100, desc=desc, bar_format=_JOB_BAR, disable=not show, leave=True) as bar:

        def on_progress(meta: common_pb2.OperationMetadata) -> None:
            bar.n = min(100.0, max(bar.n, meta.progress_percent))
            if meta.status_message:
                bar.set_postfix_str(meta.status_message, refresh=False)
            bar.refresh()

        try:
            done = client.wait_operation(
                operation, on_progress=on_progress, poll=poll, on_unavailable=unavailable_note(client)
            )
        except KeyboardInterrupt:
            bar.close()
            click.echo(
                f"\ninterrupted; {name} keeps running on the server. Follow it with "
                f"`foretell operations describe {name}` or stop it with "
                f"`foretell operations cancel {name}`.",
                err=True,
            )
            raise
        if done.WhichOneof("result") == "response":
            bar.n = 100
            bar.refresh()
    return done


def unavailable_note(client: Client) -> Callable[[ForetellError], None]:
    """What to print when the server stops answering during a wait (a graceful drain, a restart): the job goes on."""

    def note(_error: ForetellError) -> None:
        tqdm.write(
            f"server unavailable (draining or restarting?); waiting up to {client.unavailable_wait:g} s for it",
            file=sys.stderr,
        )

    return note


def upload_csv(
    client: Client,
    dataset: str,
    path: str | os.PathLike[str],
    *,
    mode: pb.ImportMode.ValueType,
    show: bool,
    allow_empty: bool = False,
) -> operations_pb2.Operation:
    """Streams a local CSV file to ImportData with a bytes progress bar; returns the Operation."""
    size = Path(path).stat().st_size
    with tqdm(
        total=size, desc="upload", unit="B", unit_scale=True, unit_divisor=1024, disable=not show, leave=True
    ) as bar:

        def on_sent(sent: int, _total: int) -> None:
            bar.update(sent - bar.n)

        return client.import_csv(dataset, path, import_mode=mode, progress=on_sent, allow_empty=allow_empty)


def import_file(
    client: Client,
    dataset: str,
    source: str,
    *,
    mode: pb.ImportMode.ValueType,
    server_path: bool,
    show: bool,
    allow_empty: bool = False,
) -> pb.ImportJob:
    """Uploads (or, with server_path, has the server read) a CSV file and waits for the import.

    Raises ForetellError with the bad rows as field violations if the import failed.
    """
    if server_path:
        operation = client.import_uri(dataset, source, import_mode=mode, allow_empty=allow_empty)
    else:
        operation = upload_csv(client, dataset, source, mode=mode, show=show, allow_empty=allow_empty)
    done = wait_with_progress(client, operation, desc="import", show=show)
    return operation_response(done, pb.ImportJob)
