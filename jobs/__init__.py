"""Background work: the cron tick and its tasks, the pipelines, RQ job entry points and the CLI."""
