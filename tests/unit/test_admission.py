"""Admission: unary calls and streams are counted apart; streams per principal, the internal one exempt."""

from __future__ import annotations

import pytest

from foretell.core.admission import Admission
from foretell.core.auth import INTERNAL_PRINCIPAL
from foretell.core.errors import ResourceExhausted


def test_streams_are_bounded_per_principal_and_in_total_and_released_once() -> None:
    admission = Admission(max_calls=1, max_streams=5, max_streams_per_principal=2)
    a = [admission.admit_stream("alice") for _ in range(2)]
    with pytest.raises(ResourceExhausted, match="principal 'alice'"):
        admission.admit_stream("alice")
    with pytest.raises(ResourceExhausted, match="this connection"):
        [admission.admit_stream("peer:ipv4:127.0.0.1:1") for _ in range(3)]
    assert admission.streams == 4
    a[0]()
    a[0]()  # a second release changes nothing
    assert admission.streams == 3
    admission.admit_stream("alice")
    admission.admit_stream("carol")
    with pytest.raises(ResourceExhausted, match="FORETELL_MAX_STREAMS\\)"):
        admission.admit_stream("bob")


def test_the_internal_principal_has_only_the_total_bound_and_calls_have_their_own() -> None:
    admission = Admission(max_calls=1, max_streams=3, max_streams_per_principal=1)
    for _ in range(3):
        admission.admit_stream(INTERNAL_PRINCIPAL)
    release = admission.admit_call()  # streams take nothing from the calls' budget
    with pytest.raises(ResourceExhausted, match="FORETELL_MAX_CONCURRENT_RPCS"):
        admission.admit_call()
    release()
    admission.admit_call()
