"""Serve the product for a benchmark: ``create_app()`` configured from the environment (PKVM_INSTANCE_PATH,
DATABASE_URL, PKVM_*, REDIS_URL), werkzeug's threaded WSGI server on 127.0.0.1 and a port the system picks.

Prints one JSON line ``{"port": N}`` once listening; serves until SIGTERM or SIGINT. No ticker is started
(the benchmarks set PKVM_TICKER_SECONDS=0 anyway); request logging is off. ``python bench/_wsgi.py
MODULE:NAME`` serves that WSGI app instead (bench/_floor.py's).
"""
from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> int:
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if argv:
        import importlib
        module, _colon, name = argv[0].partition(":")
        app, product = getattr(importlib.import_module(module), name), False
    else:
        from app import create_app
        app, product = create_app(), True
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
        if product:
            from core.extensions import db
            with app.app_context():
                db.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
