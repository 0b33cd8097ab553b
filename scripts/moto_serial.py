"""moto's server, handling one request at a time.

moto's DynamoDB backend takes no locks, and `moto_server` serves requests on parallel threads,
so two concurrent conditional writes to one item can both pass their condition, and a reader
can see an item half-way through an update. Real DynamoDB is linearizable per item, and the
gateway's tests of concurrent limits, claims and breaker transitions depend on exactly that.
This launcher keeps moto's threaded HTTP server (connections stay independent) but runs every
DynamoDB request under one lock, which makes each of them atomic. Other services (SQS long
polls, SES) are served in parallel as before.

Usage: python scripts/moto_serial.py -H 127.0.0.1 -p PORT
"""

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    app = DomainDispatcherApplication(create_backend_app)
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
