"""moto's server, handling one request at a time.

moto's DynamoDB backend takes no locks, and `moto_server` serves requests on parallel threads,
so two concurrent conditional writes to one item can both pass their condition, and a reader
can see an item half-way through an update. Real DynamoDB is linearizable per item, and the
gateway's tests of concurrent limits, claims and breaker transitions depend on exactly that.
This launcher keeps moto's threaded HTTP server (connections stay independent) but runs every
DynamoDB request under one lock, which makes each of them atomic. Other services (SQS long
polls, SES) are served in parallel as before.

It also gives DynamoDB's TransactWriteItems the client-token idempotency moto lacks (a retried
transaction whose first attempt succeeded is not applied again; see ClientTokens), and holds moto
to a rule of SQS that moto does not enforce and that decides whether a
deferred message is lost: a delivery can stay invisible for at most 12 hours counted from its
receive, and SQS refuses (does not clamp) a ChangeMessageVisibility that would end later
("Total VisibilityTimeout for the message is beyond the limit [43200 seconds]"; Amazon SQS
Developer Guide, "Amazon SQS visibility timeout": "the maximum is 12 hours ... from the time
the message is received"). The launcher notes when each receipt handle was received and answers
such a change with SQS's InvalidParameterValue. moto already refuses message bodies above 1 MiB
and a receive asking for more than 12 hours. Only the JSON protocol (what the AWS SDKs speak)
is checked.

Usage: python scripts/moto_serial.py -H 127.0.0.1 -p PORT
"""

import argparse
import io
import json
import os
import signal
import sys
import threading
import time

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


MAX_VISIBILITY_S = 43200


class VisibilityLimit:
    """Receive times of receipt handles, and SQS's 12-hour rule checked against them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = {}

    def note_receive(self, response_body: bytes) -> None:
        try:
            messages = json.loads(response_body or b"{}").get("Messages") or []
        except ValueError:
            return
        now = time.monotonic()
        with self.lock:
            if len(self.received) > 200_000:
                # Test runs are short; forget handles far older than 12 hours ever matter.
                cutoff = now - MAX_VISIBILITY_S
                self.received = {h: t for h, t in self.received.items() if t > cutoff}
            for m in messages:
                if "ReceiptHandle" in m:
                    self.received[m["ReceiptHandle"]] = now

    def beyond(self, handle: str, visibility) -> bool:
        """True when `visibility` seconds from now end over 12 hours after the receive."""
        with self.lock:
            received = self.received.get(handle)
        try:
            seconds = int(visibility)
        except (TypeError, ValueError):
            return False  # moto answers malformed values itself
        if received is None:
            return False
        return time.monotonic() - received + seconds > MAX_VISIBILITY_S


def refusal_message(visibility) -> str:
    return (
        f"Value {visibility} for parameter VisibilityTimeout is invalid. Reason: Total "
        f"VisibilityTimeout for the message is beyond the limit [{MAX_VISIBILITY_S} seconds]."
    )


def sqs_error(start_response, message: str):
    body = json.dumps(
        {"__type": "com.amazonaws.sqs#InvalidParameterValue", "message": message}
    ).encode()
    start_response(
        "400 Bad Request",
        [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-query-error", "InvalidParameterValue;Sender"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]


def call(app, environ, body: bytes):
    """Runs `app` on `environ` with `body`; returns (status, headers, response body)."""
    environ = dict(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers

    out = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], out


def faithful_sqs(app, limit: VisibilityLimit):
    """Wraps moto's app with SQS's visibility rule (see the module docs)."""

    def handle(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith("AmazonSQS."):
            return app(environ, start_response)
        action = target.split(".", 1)[1]
        if action not in ("ReceiveMessage", "ChangeMessageVisibility", "ChangeMessageVisibilityBatch"):
            return app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        if action == "ChangeMessageVisibility":
            vt = request.get("VisibilityTimeout")
            if limit.beyond(request.get("ReceiptHandle", ""), vt):
                return sqs_error(start_response, refusal_message(vt))
        if action == "ChangeMessageVisibilityBatch":
            entries = request.get("Entries") or []
            refused = [
                e for e in entries
                if limit.beyond(e.get("ReceiptHandle", ""), e.get("VisibilityTimeout"))
            ]
            if refused:
                failed = [
                    {
                        "Id": e.get("Id"),
                        "SenderFault": True,
                        "Code": "InvalidParameterValue",
                        "Message": refusal_message(e.get("VisibilityTimeout")),
                    }
                    for e in refused
                ]
                rest = [e for e in entries if e not in refused]
                answer = {"Successful": [], "Failed": failed}
                headers = [("Content-Type", "application/x-amz-json-1.0")]
                status = "200 OK"
                if rest:
                    status, headers, out = call(
                        app, environ, json.dumps({**request, "Entries": rest}).encode()
                    )
                    if not status.startswith("200"):
                        start_response(status, headers)
                        return [out]
                    moto = json.loads(out or b"{}")
                    answer["Successful"] = moto.get("Successful") or []
                    answer["Failed"] = (moto.get("Failed") or []) + failed
                    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                payload = json.dumps(answer).encode()
                start_response(status, headers + [("Content-Length", str(len(payload)))])
                return [payload]
        status, headers, out = call(app, environ, body)
        if action == "ReceiveMessage" and status.startswith("200"):
            limit.note_receive(out)
        start_response(status, headers)
        return [out]

    return handle


class ClientTokens:
    """DynamoDB's idempotent TransactWriteItems, which moto does not implement: a call carrying a
    ClientRequestToken that already succeeded within the last 10 minutes returns that success
    without writing again (Amazon DynamoDB API Reference, TransactWriteItems, ClientRequestToken:
    "If the original TransactWriteItems call was successful, the subsequent TransactWriteItems
    calls with the same client token return successfully without making any changes"). Without
    it, a transaction whose answer was lost and that the client retried is applied twice."""

    WINDOW_S = 600

    def __init__(self) -> None:
        self.done = {}

    def wrap(self, app):
        def handle(environ, start_response):
            if environ.get("HTTP_X_AMZ_TARGET", "") != "DynamoDB_20120810.TransactWriteItems":
                return app(environ, start_response)
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            try:
                token = json.loads(body or b"{}").get("ClientRequestToken")
            except ValueError:
                token = None
            now = time.monotonic()
            self.done = {t: v for t, v in self.done.items() if now - v[0] < self.WINDOW_S}
            if token and token in self.done:
                _, status, headers, out = self.done[token]
                start_response(status, headers)
                return [out]
            status, headers, out = call(app, environ, body)
            if token and status.startswith("200"):
                self.done[token] = (now, status, headers, out)
            start_response(status, headers)
            return [out]

        return handle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    app = ClientTokens().wrap(
        faithful_sqs(DomainDispatcherApplication(create_backend_app), VisibilityLimit())
    )
    lock = threading.Lock()

    def one_at_a_time(environ, start_response):
        # Only DynamoDB needs it; SQS long polls must not hold up every other request.
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            return app(environ, start_response)
        with lock:
            # Drain the body inside the lock: the response is computed lazily by some routes.
            return list(app(environ, start_response))

    run_simple(
        args.host,
        args.port,
        one_at_a_time,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
