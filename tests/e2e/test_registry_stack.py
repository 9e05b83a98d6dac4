"""The registry deployment works the way the seeds use it.

The tests that follow the registry trust this stack: that the stage and the alias resolve to
version 1 and follow `set_stage` and `move_alias`, that the two versions tell each other
apart, that artifacts really go through the proxy into the S3 bucket, and that moving the
alias reaches a webhook, signed as MLflow documents it.
"""

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import mlflow.pyfunc
import numpy as np
import pandas as pd
from support.registry_stack import (
    ARTIFACTS_PREFIX,
    CHAMPION,
    PRODUCTION,
    REGISTERED_NAME,
    RegistryStack,
    expected_predictions,
    move_alias,
    set_stage,
    tracking,
)

ROWS = 5
#: The least difference between the versions' answers on the first rows.
VERSIONS_APART = 0.05
WEBHOOK_SECRET = "registry-stack-test-secret"
ALIAS_CREATED = "model_version_alias.created"
DELIVERY_TIMEOUT_S = 15.0
#: How old a delivery may be: MLflow's docs advise refusing older ones as replays.
MAX_DELIVERY_AGE_S = 300


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, "queue.Queue[Delivery]"]]:
    """An HTTP server on a free loopback port that answers 200 to every POST and queues it;
    its URL and the queue."""
    deliveries: queue.Queue[Delivery] = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            deliveries.put(Delivery(self.path, dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: pytest shows the assertions, not an access log."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mlflow-webhook", deliveries
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def signature_is_valid(secret: str, delivery: Delivery) -> bool:
    """MLflow's documented check: `v1,` and the base64 HMAC-SHA256, keyed by the secret, of
    `<delivery id>.<timestamp>.<body>`, compared in constant time."""
    version, _, signature = delivery.headers["X-MLflow-Signature"].partition(",")
    signed = ".".join(
        [
            delivery.headers["X-MLflow-Delivery-Id"],
            delivery.headers["X-MLflow-Timestamp"],
            delivery.body.decode("utf-8"),
        ]
    )
    digest = hmac.new(secret.encode("utf-8"), signed.encode("utf-8"), hashlib.sha256).digest()
    return version == "v1" and hmac.compare_digest(signature, base64.b64encode(digest).decode())


def test_stage_and_alias_resolve_to_version_1(
    registry_stack: RegistryStack, wine_frame: pd.DataFrame
) -> None:
    """`models:/NAME/Production` and `models:/NAME@champion` answer what version 1 answers."""
    rows = wine_frame.iloc[:ROWS]
    expected = expected_predictions(registry_stack, 1, rows)
    with tracking(registry_stack):
        by_stage = mlflow.pyfunc.load_model(f"models:/{REGISTERED_NAME}/{PRODUCTION}")
        by_alias = mlflow.pyfunc.load_model(f"models:/{REGISTERED_NAME}@{CHAMPION}")
    np.testing.assert_array_equal(by_stage.predict(rows), expected)
    np.testing.assert_array_equal(by_alias.predict(rows), expected)


def test_set_stage_moves_production(
    registry_stack: RegistryStack, wine_frame: pd.DataFrame
) -> None:
    """Production follows a transition to version 2, archiving version 1; both are put
    back afterwards."""
    rows = wine_frame.iloc[:ROWS]
    client = registry_stack.client()
    try:
        set_stage(registry_stack, 2, PRODUCTION)
        with tracking(registry_stack):
            by_stage = mlflow.pyfunc.load_model(f"models:/{REGISTERED_NAME}/{PRODUCTION}")
        version_1 = client.get_model_version(REGISTERED_NAME, "1")
    finally:
        set_stage(registry_stack, 1, PRODUCTION)
        set_stage(registry_stack, 2, "None")
    np.testing.assert_array_equal(
        by_stage.predict(rows), expected_predictions(registry_stack, 2, rows)
    )
    assert version_1.current_stage == "Archived"
    versions = client.search_model_versions(f"name = '{REGISTERED_NAME}'")
    stages = {v.version: v.current_stage for v in versions if v.version in ("1", "2")}
    assert stages == {"1": PRODUCTION, "2": "None"}


def test_versions_predict_clearly_differently(
    registry_stack: RegistryStack, wine_frame: pd.DataFrame
) -> None:
    """Serving the wrong version shows in every one of the first rows' answers."""
    rows = wine_frame.iloc[:ROWS]
    first = expected_predictions(registry_stack, 1, rows)
    second = expected_predictions(registry_stack, 2, rows)
    assert np.abs(first - second).min() > VERSIONS_APART, (first, second)


def test_model_artifacts_live_in_the_bucket(registry_stack: RegistryStack) -> None:
    """Version 1's MLmodel is an object of the bucket, under the proxied artifact root."""
    location = registry_stack.client().get_model_version_download_uri(REGISTERED_NAME, "1")
    assert location.startswith("mlflow-artifacts:/"), location
    key = f"{ARTIFACTS_PREFIX}/{location.removeprefix('mlflow-artifacts:/')}/MLmodel"
    listed = registry_stack.s3_client().list_objects_v2(
        Bucket=registry_stack.bucket, Prefix=f"{ARTIFACTS_PREFIX}/"
    )
    assert key in [entry["Key"] for entry in listed.get("Contents", [])]
    mlmodel = registry_stack.s3_client().get_object(Bucket=registry_stack.bucket, Key=key)
    assert b"sklearn" in mlmodel["Body"].read()


def test_alias_move_reaches_a_signed_webhook(registry_stack: RegistryStack) -> None:
    """Moving `champion` to version 2 POSTs `model_version_alias.created` to a webhook with a
    secret, signed with it; the alias is moved back afterwards."""
    client = registry_stack.client()
    with webhook_receiver() as (url, deliveries):
        webhook = client.create_webhook(
            name="registry-stack-alias", url=url, events=[ALIAS_CREATED], secret=WEBHOOK_SECRET
        )
        try:
            move_alias(registry_stack, 2)
            delivery = deliveries.get(timeout=DELIVERY_TIMEOUT_S)
        finally:
            client.delete_webhook(webhook.webhook_id)
            move_alias(registry_stack, 1)
    assert delivery.path == "/mlflow-webhook"
    assert delivery.headers["Content-Type"] == "application/json"
    assert signature_is_valid(WEBHOOK_SECRET, delivery), delivery
    assert not signature_is_valid("another secret", delivery)
    assert abs(time.time() - int(delivery.headers["X-MLflow-Timestamp"])) < MAX_DELIVERY_AGE_S
    payload = json.loads(delivery.body)
    assert payload["entity"] == "model_version_alias"
    assert payload["action"] == "created"
    assert payload["data"] == {"name": REGISTERED_NAME, "alias": CHAMPION, "version": "2"}
