"""The outbox: completion emails, as the owner would receive them.

An SQS queue subscribed to the completion topic stands in for the email subscription (SNS email
sends nothing in moto). Each message becomes an `Email`; with a folder, also an .eml file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Email:
    subject: str
    body: str
    attributes: dict[str, str]  # SNS message attributes: mission_id or pipeline_id, status, notify

    @classmethod
    def from_envelope(cls, envelope: dict[str, Any]) -> Email:
        """SNS -> SQS delivers the message in an envelope (Subject, Message, attributes)."""
        attributes = {
            k: v.get("Value", "") for k, v in envelope.get("MessageAttributes", {}).items()
        }
        return cls(envelope.get("Subject") or "lighthpc", envelope.get("Message", ""), attributes)

    def to_eml(self) -> bytes:
        mail = EmailMessage()
        mail["From"] = "lighthpc <lighthpc@localhost>"
        mail["To"] = self.attributes.get("notify") or "owner@localhost"
        mail["Subject"] = self.subject
        mail["Date"] = formatdate(localtime=True)
        if "pipeline_id" in self.attributes:
            mail["X-Lighthpc-Pipeline"] = self.attributes["pipeline_id"]
        else:
            mail["X-Lighthpc-Mission"] = self.attributes.get("mission_id", "")
        mail["X-Lighthpc-Status"] = self.attributes.get("status", "")
        mail.set_content(self.body, cte="8bit")
        return bytes(mail)


class Outbox:
    def __init__(
        self,
        sns: Any,
        sqs: Any,
        topic_arn: str,
        queue_name: str,
        folder: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.name = "outbox"
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self._sqs = sqs
        self._echo = echo
        self._url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self._url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)

    def poll_once(self, wait_seconds: int = 1) -> list[Email]:
        """The emails one receive brings (written to the folder, and echoed, if set)."""
        messages = self._sqs.receive_message(
            QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        ).get("Messages", [])
        emails = []
        for m in messages:
            email = Email.from_envelope(json.loads(m["Body"]))
            if self.folder is not None:
                path = self._write(email, m["MessageId"])
                if self._echo is not None:
                    self._echo(f"\n--- email written to {path} ---\n{path.read_text()}")
            emails.append(email)
            self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=m["ReceiptHandle"])
        return emails

    def drain(self) -> list[Email]:
        """Every email published so far."""
        found: list[Email] = []
        while batch := self.poll_once(wait_seconds=0):
            found += batch
        return found

    def _write(self, email: Email, message_id: str) -> Path:
        assert self.folder is not None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        named = email.attributes.get("mission_id") or email.attributes.get("pipeline_id")
        path = self.folder / f"{stamp}-{named or message_id}.eml"
        path.write_bytes(email.to_eml())
        return path
