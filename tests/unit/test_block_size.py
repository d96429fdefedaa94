"""worker_ami.agent.block_size: how many transactions one claim takes."""

from __future__ import annotations

from chalicelib.store.transactions import MAX_SPAN
from worker_ami.agent import BLOCK_SECONDS, MIN_BLOCK_SECONDS, block_size


def test_the_first_claim_takes_one_transaction_to_find_the_pace() -> None:
    assert block_size(None, remaining=10_000, parallel=16, total=10_000) == 1


def test_a_large_mission_is_claimed_in_blocks_of_about_block_seconds() -> None:
    # 1 s transactions, far more work than the slots: BLOCK_SECONDS of them per claim.
    assert block_size(1.0, remaining=100_000, parallel=16, total=100_000) == int(BLOCK_SECONDS)
    # Tiny ones: MAX_SPAN bounds a block however fast its transactions are.
    assert block_size(0.0001, remaining=10**7, parallel=4, total=10**7) == MAX_SPAN


def test_blocks_shrink_with_what_remains_but_not_below_min_block_seconds() -> None:
    # 50 ms transactions: a share of what remains (half of it over the slots) ...
    assert block_size(0.05, remaining=6_400, parallel=16, total=100_000) == 200
    # ... down to MIN_BLOCK_SECONDS of them, in a mission big enough to give every slot that.
    least = int(MIN_BLOCK_SECONDS / 0.05)
    assert block_size(0.05, remaining=300, parallel=16, total=100_000) == least


def test_a_mission_too_small_for_min_block_seconds_per_slot_is_shared_over_every_slot() -> None:
    # 480 transactions of 5 ms on 16 slots: 2 s of them (400) would leave most slots without
    # a block while one slot runs 400 after another; each slot gets its share instead.
    assert block_size(0.005, remaining=479, parallel=16, total=480) == 30
    assert block_size(0.005, remaining=20, parallel=16, total=480) == 30  # the claim gets 20
    # Fewer transactions than slots: one each.
    assert block_size(0.005, remaining=9, parallel=16, total=10) == 1


def test_a_claim_leaving_less_than_a_block_takes_the_rest_too() -> None:
    # 60 transactions of 68 ms on 2 slots: after the first (the pace), 29 and then 30, not
    # 29, 29 and a block of one.
    assert block_size(0.068, remaining=59, parallel=2, total=60) == 29
    assert block_size(0.068, remaining=30, parallel=2, total=60) == 30
    # Nothing known to remain (only retries are left): the usual size, not the rest.
    assert block_size(0.068, remaining=0, parallel=2, total=60) == 29


def test_long_transactions_are_claimed_one_at_a_time() -> None:
    assert block_size(600.0, remaining=1_000, parallel=4, total=1_000) == 1
