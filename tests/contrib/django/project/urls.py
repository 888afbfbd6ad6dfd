from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": request.user.get_username() or None})


urlpatterns = [
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("whoami/", whoami, name="whoami"),
    path("admin/", admin.site.urls),
    path("llm/", include("ollama_asgi.contrib.django.urls")),
]
