"""Shared fixtures: real services on free ports, stopped by PID."""

pytest_plugins = ["tests.fixtures.broker"]
