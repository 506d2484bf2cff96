"""What a burst costs before the product does any work: two WSGI apps that answer a CreateAccount call
the way the bridge does (200, ``{"result": "success", "status": "creation", "queued": false}``) without
checking, storing or queueing anything, for ``bridge_latency.py --floor``.

``bare``: a plain WSGI callable (reads the body, answers); ``flask``: one Flask route that parses the JSON
body and answers with ``jsonify``. Served by the same server as the product (``gunicorn -w N bench._floor:flask``).
"""
from __future__ import annotations

import json

from flask import Flask, jsonify, request

ANSWER = {"result": "success", "status": "creation", "queued": False}
_BODY = json.dumps(ANSWER).encode()


def bare(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(_BODY)))])
    return [_BODY]


flask = Flask(__name__)


@flask.post("/bridge/v1/module/<function>")
def module_call(function: str):
    request.get_json()
    return jsonify(ANSWER)
