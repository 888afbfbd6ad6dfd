"""What every host test shares, started once per test session: one emulator, one Django setup.

Django's settings are process-global, so the embedded project is configured exactly once, on a
temporary SQLite file, whichever test needs it first; both conftests (``tests/hosts`` and
``tests/contrib``) get it from here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading

from ollama_asgi.testing import EmulatorServer

API_KEY = "test-api-key-1"
ADMIN_KEY = "test-admin-key-1"
PASSWORD = "{}-password"

_lock = threading.Lock()
_emulator: EmulatorServer | None = None
_django_ready = False


def shared_emulator() -> EmulatorServer:
    global _emulator
    with _lock:
        if _emulator is None:
            _emulator = EmulatorServer().start()
            atexit.register(_emulator.stop)
        return _emulator


def setup_django() -> None:
    """Configure the embedded project, migrate a fresh SQLite file and create its users (once)."""
    global _django_ready
    upstream = shared_emulator().url
    with _lock:
        if _django_ready:
            return
        workdir = tempfile.mkdtemp(prefix="ollama-asgi-django-")
        atexit.register(shutil.rmtree, workdir, True)
        os.environ["DJANGO_SETTINGS_MODULE"] = "tests.contrib.django.project.settings"
        os.environ["TEST_DJANGO_DB"] = os.path.join(workdir, "db.sqlite3")
        os.environ["TEST_DJANGO_UPSTREAM"] = upstream
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        _create_users()
        _django_ready = True


def _create_users() -> None:
    from django.contrib.auth.models import Group, User

    users = Group.objects.create(name="llm-users")
    small = Group.objects.create(name="small-models")
    User.objects.create_user("alice", password=PASSWORD.format("alice")).groups.add(users)
    User.objects.create_user("bob", password=PASSWORD.format("bob")).groups.add(small)
    User.objects.create_user("root", password=PASSWORD.format("root"), is_staff=True)
