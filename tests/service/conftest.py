"""Fixtures for the service tests; the helpers live in ``service_helpers`` (this folder is on sys.path)."""

from __future__ import annotations

import pytest
from service_helpers import FakePredictor, make_client


@pytest.fixture
def fake():
    return FakePredictor()


@pytest.fixture
def client(fake):
    client = make_client(fake)
    yield client
    client.__exit__(None, None, None)
