"""Configuration for ``rq cron jobs/rq_cron.py``: the one-minute tick that decides which tasks are due."""
import os

from rq import cron

from jobs.worker import tick_job

# The same queue the workers listen on (PKVM_RQ_QUEUE or FLASK_RQ_QUEUE, as the app reads it).
cron.register(tick_job, queue_name=os.environ.get("PKVM_RQ_QUEUE") or os.environ.get("FLASK_RQ_QUEUE") or "pkvm",
              interval=60)
