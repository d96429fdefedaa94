"""The repository: every DynamoDB read and write, by table, handing out typed domain objects.

`Store(settings).missions` is the mission table (with the input bindings), `.transactions` the
transaction table. Callers get `chalicelib.domain` values and the errors of
`chalicelib.store.errors`; the pynamodb models (`chalicelib.store.models`) stay in here.
"""

from __future__ import annotations

from typing import Any

from pynamodb.connection import Connection
from pynamodb.transactions import TransactWrite

from chalicelib.aws import share_session
from chalicelib.settings import Settings
from chalicelib.store.errors import Conflict, InputBusy, NotFound, StoreError, retry_transient
from chalicelib.store.missions import MissionStore
from chalicelib.store.models import bind_tables
from chalicelib.store.transactions import TransactionStore

__all__ = ["Conflict", "InputBusy", "NotFound", "Store", "StoreError"]


class _TransactWrite(TransactWrite):
    """A TransactWriteItems committed again when cancelled for a conflict or throttling."""

    def _commit(self) -> Any:
        return retry_transient(super()._commit)


class Store:
    def __init__(self, settings: Settings) -> None:
        bind_tables(settings)
        # One connection for every TransactWriteItems: each new one would build a botocore client.
        connection = Connection(region=settings.region)
        share_session(connection)

        def atomically() -> TransactWrite:
            return _TransactWrite(connection=connection)

        self.missions = MissionStore(atomically)
        self.transactions = TransactionStore(atomically)
