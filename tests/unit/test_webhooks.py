"""MLflow webhook deliveries: signed by MLflow's own signer, they pass; anything else is
refused with 401, and the events that can move a reference are recognised."""

import json
import time
import uuid

import pytest
from arrowsmith.serving import webhooks
from arrowsmith.serving.webhooks import WebhookRefused
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.webhooks.delivery import _generate_hmac_signature

SECRET = "s3cret"


def delivery(
    payload: dict[str, object], secret: str = SECRET, sent_at: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """A body and headers as MLflow sends them (lower-case names, as the HTTP front has
    them)."""
    body = json.dumps(payload)
    delivery_id = str(uuid.uuid4())
    timestamp = str(int(time.time() if sent_at is None else sent_at))
    headers = {
        "x-mlflow-delivery-id": delivery_id,
        "x-mlflow-timestamp": timestamp,
        "x-mlflow-signature": _generate_hmac_signature(secret, delivery_id, timestamp, body),
    }
    return body.encode(), headers


ALIAS_SET = {
    "entity": "model_version_alias",
    "action": "created",
    "timestamp": "2026-11-30T12:00:00+00:00",
    "data": {"name": "ElasticNetWineModel", "alias": "champion", "version": "2"},
}


def test_a_delivery_signed_by_mlflow_passes_and_parses() -> None:
    body, headers = delivery(ALIAS_SET)
    webhooks.verify(SECRET, body, headers, time.time())
    event = webhooks.parse(body)
    assert event == webhooks.WebhookEvent(
        "model_version_alias", "created", "ElasticNetWineModel", "2"
    )
    assert event.moves_references


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda body, headers: (body, {**headers, "x-mlflow-signature": "v1,AAAA"}), "match"),
        (lambda body, headers: (body + b" ", headers), "match"),
        (lambda body, headers: (body, {**headers, "x-mlflow-delivery-id": "other"}), "match"),
        (lambda body, headers: (body, {**headers, "x-mlflow-signature": "v0,xx"}), "version"),
        (
            lambda body, headers: (
                body,
                {k: v for k, v in headers.items() if k != "x-mlflow-signature"},
            ),
            "needs the headers",
        ),
        (lambda body, headers: (body, {**headers, "x-mlflow-timestamp": "soon"}), "Unix"),
    ],
)
def test_a_tampered_delivery_is_refused(tamper, message: str) -> None:
    body, headers = tamper(*delivery(ALIAS_SET))
    with pytest.raises(WebhookRefused, match=message) as refused:
        webhooks.verify(SECRET, body, headers, time.time())
    assert refused.value.status == 401


def test_another_secret_or_an_old_delivery_is_refused() -> None:
    body, headers = delivery(ALIAS_SET, secret="other")
    with pytest.raises(WebhookRefused, match="--webhook-secret"):
        webhooks.verify(SECRET, body, headers, time.time())
    body, headers = delivery(ALIAS_SET, sent_at=time.time() - 2 * webhooks.MAX_AGE_SECONDS)
    with pytest.raises(WebhookRefused, match="timestamp"):
        webhooks.verify(SECRET, body, headers, time.time())


def test_events_that_move_no_reference_are_recognised() -> None:
    created = {**ALIAS_SET, "entity": "model_version", "data": {"name": "M", "version": "3"}}
    assert webhooks.parse(json.dumps(created).encode()).moves_references
    tagged = {**ALIAS_SET, "entity": "model_version_tag", "action": "set"}
    assert not webhooks.parse(json.dumps(tagged).encode()).moves_references
    for body in (b"[]", b"{", b'{"entity": 1}'):
        with pytest.raises(WebhookRefused) as refused:
            webhooks.parse(body)
        assert refused.value.status == 400


HEADER_NAMES = st.sampled_from(
    [webhooks.SIGNATURE_HEADER, webhooks.DELIVERY_ID_HEADER, webhooks.TIMESTAMP_HEADER, "x-other"]
)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=500, derandomize=True, deadline=None)
@given(
    body=st.binary(max_size=512) | JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    headers=st.dictionaries(HEADER_NAMES, st.text(max_size=64), max_size=4),
)
def test_no_delivery_breaks_the_receiver(body: bytes, headers: dict[str, str]) -> None:
    """Whatever a client sends to the webhook path, the answer is a refusal with a status
    or a parsed event, never another exception."""
    try:
        webhooks.verify(SECRET, body, headers, time.time())
    except WebhookRefused as refused:
        assert refused.status == 401
    try:
        webhooks.parse(body)
    except WebhookRefused as refused:
        assert refused.status == 400
