"""A minimal Django project for the adapter's tests: settings, URLconf and ``asgi.py`` as a team has them."""
