"""Errors the API answers with a status of their own (as Chalice's `ChaliceViewError` does).

Domain code raises them; app.py turns any of them into its answer in one place. The body is
the project's own (`{"error": ...}` plus details), which clients and the CLI read.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    STATUS_CODE = 500

    def body(self) -> dict[str, Any]:
        return {"error": str(self)}

    def headers(self) -> dict[str, str]:
        return {}
