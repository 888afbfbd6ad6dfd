"""The demo project's own app: the chat page and the demo users."""
