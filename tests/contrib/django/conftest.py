"""Django is configured once for the session, on the embedded project in ``project/``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hosts import django_hosts
from tests.hosts.base import Host
from tests.hosts.shared import setup_django

# The test modules import Django models, so the embedded project is set up at collection time.
setup_django()


@pytest.fixture(scope="module", params=["django-urlconf", "django-asgi"])
def django_host(request: pytest.FixtureRequest) -> Iterator[Host]:
    start = django_hosts.start_urlconf if request.param == "django-urlconf" else django_hosts.start_mount
    host, _ = start()
    yield host
    host.stop()
