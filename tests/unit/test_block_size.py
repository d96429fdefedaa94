"""worker_ami.agent.block_size: how many transactions one claim takes."""

from __future__ import annotations

from chalicelib.store.transactions import MAX_SPAN
from worker_ami.agent import BLOCK_SECONDS, MIN_BLOCK_SECONDS, block_size


def test_the_first_claim_takes_one_transaction_to_find_the_pace() -> None:
    assert block_size(None, remaining=10_000, parallel=16) == 1


def test_a_large_mission_is_claimed_in_blocks_of_about_block_seconds() -> None:
    # 1 s transactions, far more work than the slots: BLOCK_SECONDS of them per claim.
    assert block_size(1.0, remaining=100_000, parallel=16) == int(BLOCK_SECONDS)
    # Tiny ones: MAX_SPAN bounds a block however fast its transactions are.
    assert block_size(0.0001, remaining=10**7, parallel=4) == MAX_SPAN


def test_blocks_shrink_with_what_remains_but_not_below_min_block_seconds() -> None:
    # 50 ms transactions: a share of what remains (half of it over the slots) ...
    assert block_size(0.05, remaining=6_400, parallel=16) == 200
    # ... down to MIN_BLOCK_SECONDS of them.
    least = int(MIN_BLOCK_SECONDS / 0.05)
    assert block_size(0.05, remaining=300, parallel=16) == least
    # A mission of less work than that per slot runs on fewer slots: 480 transactions of
    # 5 ms take two claims, of 400 and 79, not one per slot (finishing at most 2 s sooner).
    assert block_size(0.005, remaining=479, parallel=16) == 400
    assert block_size(0.005, remaining=79, parallel=16) == 400  # the claim gets 79


def test_a_claim_leaving_a_tenth_of_itself_or_less_takes_that_rest_too() -> None:
    # 60 transactions of 68 ms on 2 slots: after the first (the pace), 29 and then 30, not
    # 29, 29 and a block of one.
    assert block_size(0.068, remaining=59, parallel=2) == 29
    assert block_size(0.068, remaining=30, parallel=2) == 30
    assert block_size(0.005, remaining=440, parallel=16) == 440  # 400 would leave 40
    assert block_size(0.005, remaining=441, parallel=16) == 400  # ... not 41
    # Nothing known to remain (only retries are left): the usual size.
    assert block_size(0.068, remaining=0, parallel=2) == 29


def test_long_transactions_are_claimed_one_at_a_time() -> None:
    assert block_size(600.0, remaining=1_000, parallel=4) == 1
