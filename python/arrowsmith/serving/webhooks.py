"""MLflow's webhook deliveries (MLflow 3.3 and later, SQL backend store): the signature
check and the events that move a followed reference.

MLflow signs `{delivery id}.{timestamp}.{body}` with HMAC-SHA256 under the webhook's secret
and sends `X-MLflow-Signature: v1,<base64 digest>` with `X-MLflow-Delivery-Id` and
`X-MLflow-Timestamp` (Unix seconds). A delivery whose timestamp is more than
MAX_AGE_SECONDS away from now is refused, so a captured one cannot be replayed later."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass

SIGNATURE_HEADER = "x-mlflow-signature"
DELIVERY_ID_HEADER = "x-mlflow-delivery-id"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
SIGNATURE_VERSION = "v1"
MAX_AGE_SECONDS = 300

#: The events that can move a reference: an alias set on a version, and a new version
#: (which `latest` points to).
MOVING_EVENTS = frozenset({("model_version_alias", "created"), ("model_version", "created")})


class WebhookRefused(Exception):
    """The delivery is not one to act on; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class WebhookEvent:
    entity: str
    action: str
    #: The registered model the event is about ("" when the payload names none).
    registered_name: str
    version: str

    @property
    def moves_references(self) -> bool:
        return (self.entity, self.action) in MOVING_EVENTS


def verify(secret: str, body: bytes, headers: Mapping[str, str], now: float) -> None:
    """Raises WebhookRefused (401) unless the delivery carries MLflow's valid, fresh
    signature of this body under `secret`. `headers` has lower-case names."""
    signature = headers.get(SIGNATURE_HEADER)
    delivery_id = headers.get(DELIVERY_ID_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature or not delivery_id or not timestamp:
        raise WebhookRefused(
            401,
            f"a webhook delivery needs the headers {SIGNATURE_HEADER}, {DELIVERY_ID_HEADER} "
            f"and {TIMESTAMP_HEADER}",
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRefused(401, f"{TIMESTAMP_HEADER} is not Unix seconds") from None
    if abs(now - sent_at) > MAX_AGE_SECONDS:
        raise WebhookRefused(
            401, f"the delivery's timestamp is more than {MAX_AGE_SECONDS} s from now"
        )
    version, _, digest = signature.partition(",")
    if version != SIGNATURE_VERSION:
        raise WebhookRefused(401, f"the signature is not of version {SIGNATURE_VERSION}")
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest())
    if not hmac.compare_digest(expected, digest.encode()):
        raise WebhookRefused(401, "the signature does not match (is --webhook-secret right?)")


def parse(body: bytes) -> WebhookEvent:
    """The event a verified delivery reports; WebhookRefused (400) when it is not one."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise WebhookRefused(400, f"the delivery is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise WebhookRefused(400, "the delivery is not a JSON object")
    entity, action, data = document.get("entity"), document.get("action"), document.get("data")
    if not isinstance(entity, str) or not isinstance(action, str):
        raise WebhookRefused(400, "the delivery has no `entity` and `action`")
    data = data if isinstance(data, dict) else {}
    name, version = data.get("name", ""), data.get("version", "")
    return WebhookEvent(entity, action, name if isinstance(name, str) else "", str(version or ""))
