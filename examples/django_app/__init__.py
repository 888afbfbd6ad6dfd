"""A Django project with its own login and users, and ollama-asgi at ``/llm`` through the URLconf.

Run it with ``make demo APP=django`` or ``python -m examples.django_app``.
"""
