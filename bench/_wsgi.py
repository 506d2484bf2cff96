"""Serve the product for a benchmark: ``create_app()`` configured from the environment (PKVM_INSTANCE_PATH,
DATABASE_URL, PKVM_*, REDIS_URL), werkzeug's threaded WSGI server on 127.0.0.1 and a port the system picks.

Prints one JSON line ``{"port": N}`` once listening; serves until SIGTERM or SIGINT. No ticker is started
(the benchmarks set PKVM_TICKER_SECONDS=0 anyway); request logging is off.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from werkzeug.serving import make_server

    from app import create_app
    from core.extensions import db

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app()
    server = make_server("127.0.0.1", 0, app, threaded=True)

    def stop(_signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"port": server.server_port}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        with app.app_context():
            db.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
