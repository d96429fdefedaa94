"""Conflicts and throttling (issue 11, defect 3): DynamoDB answers moto never gives, injected at
the client (local/faults.py). The store tries a write again when it was not done; a refused
condition stays an answer."""

from __future__ import annotations

import time

import pytest

from chalicelib.context import get_context, reset_process_state
from chalicelib.layout import Outcome, part_key
from chalicelib.store import StoreError
from chalicelib.store import errors as store_errors
from local.faults import (
    THROTTLED,
    TRANSACTION_CANCELLED,
    TRANSACTION_CONFLICT,
    Fault,
    FaultInjector,
)
from local.inprocess import ApiCallCounter, InProcessCluster
from tests.functional.test_mission import kmer_config
from tests.functional.test_reliability import claim, mission, start


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with InProcessCluster.running(workdir=tmp_path_factory.mktemp("transient")) as shared:
        yield shared


@pytest.fixture(autouse=True)
def no_backoff_wait(monkeypatch):
    monkeypatch.setattr(store_errors, "RETRY_BASE_SECONDS", 0.0)


def injected(*faults: Fault) -> FaultInjector:
    return FaultInjector(list(faults))


def test_a_claim_that_meets_a_transaction_conflict_is_tried_again(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("conflict", "conflict.fa", count=2))
    faults = injected(
        Fault("transaction_conflicts", "dynamodb", "UpdateItem", TRANSACTION_CONFLICT, times=2)
    )
    with faults.installed():
        reset_process_state()  # clients made from here on answer through the injector
        txn = claim(mission_id, "i-a/0", time.time(), 300)
    reset_process_state()
    assert faults.ledger["transaction_conflicts"] == 2
    assert txn is not None and txn.index == 0 and txn.attempts == 1


def test_a_count_cancelled_for_a_conflict_is_committed_again_once(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("cancelled", "cancelled.fa", count=1))
    txn = claim(mission_id, "i-a/0", time.time(), 300)
    faults = injected(
        Fault(
            "transaction_conflicts",
            "dynamodb",
            "TransactWriteItems",
            TRANSACTION_CANCELLED,
            times=3,
        )
    )
    with faults.installed():
        reset_process_state()
        counted = get_context().store.transactions.count_outcome(
            Outcome(mission_id, txn.index, True, 1), part_key(mission_id, txn.index, 1)
        )
    reset_process_state()
    assert counted and faults.ledger["transaction_conflicts"] == 3
    assert mission(cluster, mission_id)["transactions"]["SUCCEEDED"] == 1  # counted once


def test_throttling_beyond_botocore_is_tried_again(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("hot", "hot.fa", count=1))
    faults = injected(Fault("throttles", "dynamodb", "UpdateItem", THROTTLED, times=2))
    with faults.installed():
        reset_process_state()
        assert claim(mission_id, "i-a/0", time.time(), 300) is not None
    reset_process_state()
    assert faults.ledger["throttles"] == 2


def test_a_conflict_that_never_ends_is_a_store_error_not_an_answer(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("forever", "forever.fa", count=1))
    faults = injected(
        Fault("transaction_conflicts", "dynamodb", "UpdateItem", TRANSACTION_CONFLICT)
    )
    with faults.installed():
        reset_process_state()
        with pytest.raises(StoreError) as raised:
            claim(mission_id, "i-a/0", time.time(), 300)
    reset_process_state()
    assert type(raised.value) is StoreError  # neither Conflict (an answer) nor NotFound
    assert faults.ledger["transaction_conflicts"] == store_errors.RETRY_ATTEMPTS


def test_a_refused_condition_is_not_retried(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("refused", "refused.fa", count=1))
    txn = claim(mission_id, "i-a/0", time.time(), 300)
    counter = ApiCallCounter()
    with counter.installed():
        reset_process_state()
        assert not get_context().store.transactions.extend_lease(txn, "i-other/0", time.time(), 60)
    reset_process_state()
    assert counter.calls == ["dynamodb.UpdateItem"]  # one refusal, no retry
