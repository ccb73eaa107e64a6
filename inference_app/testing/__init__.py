"""Test doubles and fault injection: used by the test suite and for trying the clients out.

Nothing in the serving path imports this package at module level; `.dockerignore` leaves it out
of the product image (tests/docker checks both). `fake_server` stands in for the whole server,
`faults` wraps an engine below the orchestrator.
"""
