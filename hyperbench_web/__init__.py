"""HyperBench web project: settings, URLs, and the control worker's Celery app."""
