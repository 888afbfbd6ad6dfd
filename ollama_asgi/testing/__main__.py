"""``python -m ollama_asgi.testing``: run the Ollama emulator in the foreground."""

from __future__ import annotations

import argparse
import sys

from ollama_asgi.testing.cli import add_emulate_arguments, run_emulate

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ollama_asgi.testing", description=run_emulate.__doc__)
    add_emulate_arguments(parser)
    return run_emulate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
