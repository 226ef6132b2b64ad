"""A DirectRunner worker process: Beam's SDK harness (``sdk_worker_main``), started quietly.

Beam's own worker command prints some twenty INFO lines per worker on the user's terminal:
importing Beam logs a warning before any logging is set up, which makes Python install a
stderr handler that then passes every INFO line on. A handler installed first stops that;
the worker's log records still reach the launcher through Beam's logging service (errors
included), at the level ``--default_sdk_harness_log_level`` sets.
"""
import logging
import sys

logging.getLogger().addHandler(logging.NullHandler())

from apache_beam.runners.worker import sdk_worker_main  # noqa: E402 - after the handler

if __name__ == "__main__":
    sdk_worker_main.main(sys.argv)
