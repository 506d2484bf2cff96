"""The blueprint WHMCS calls through the PHP shim: one signed endpoint per module function."""
from flask import Blueprint

bp = Blueprint("bridge", __name__, url_prefix="/bridge/v1")

from . import views  # noqa: E402,F401 - registers the routes
