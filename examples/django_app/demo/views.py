from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie


@login_required
@ensure_csrf_cookie  # the page's script sends the cookie's token back in X-CSRFToken
def chat(request: HttpRequest) -> HttpResponse:
    api = reverse("ollama_asgi:gateway", kwargs={"path": ""}).rstrip("/")
    return render(request, "demo/chat.html", {"api": api})
