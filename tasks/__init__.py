"""Prefect-free building blocks of the towerflow nightly pipeline.

Every module here holds plain, typed functions that take and return paths or
plain values, so the Prefect flow in ``flows/`` only wires them together and
tests can call them directly.
"""
