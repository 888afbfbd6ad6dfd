from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from examples.django_app.demo.views import chat

urlpatterns = [
    path("", chat, name="chat"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # The gateway: Ollama's API at /llm/api/..., OpenAI's at /llm/v1/..., behind this project's login.
    path("llm/", include("ollama_asgi.contrib.django.urls")),
    *staticfiles_urlpatterns(),
]
