"""The projector: folds ALERTS, EVENTS and DLQ into the read models (`python -m projector`)."""
