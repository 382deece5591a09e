"""Prefect flows and the ``towerflow`` command line; logic lives in ``tasks/``."""
