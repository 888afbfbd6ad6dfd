"""Benchmarks: the gateway against direct Ollama (the emulator), plain Python proxies, nginx and LiteLLM.

``make bench`` (``python -m bench``) runs everything in one go and renders ``BENCHMARKS.md``.
Nothing here imports ``ollama_asgi`` at module level: the server launcher may point the gateway at
another copy of the package (``--baseline``) before it is imported.
"""
