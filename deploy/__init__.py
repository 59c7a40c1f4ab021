"""The distributed profile: loopback servers, the Postgres/Celery Dagster instance, the cluster."""
