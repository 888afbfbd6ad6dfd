"""Django users become principals: staff and ``manage_models`` are admins, groups choose models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import AnonymousUser, Group, Permission, User

from ollama_asgi import Settings
from ollama_asgi.contrib.django.principal import DjangoAuthorizer

GROUPS = {"llm-users": ("llama3.2*", "qwen2.5*"), "small-models": ("qwen2.5*",), "everything": ("*",)}
AUTHORIZE = DjangoAuthorizer(Settings(), GROUPS)


@pytest.fixture
def carol() -> Iterator[User]:
    user = User.objects.create_user("carol", password="carol-password")
    yield user
    user.delete()


def test_a_user_in_a_mapped_group_may_use_its_models(carol: User) -> None:
    carol.groups.add(Group.objects.get(name="small-models"))
    principal = AUTHORIZE.user_principal(carol)
    assert (principal.id, principal.is_admin, principal.models) == ("carol", False, ("qwen2.5*",))


def test_patterns_of_several_groups_add_up(carol: User) -> None:
    carol.groups.add(Group.objects.get(name="small-models"), Group.objects.get(name="llm-users"))
    assert set(AUTHORIZE.user_principal(carol).models or ()) == {"llama3.2*", "qwen2.5*"}


def test_a_user_in_no_mapped_group_may_use_no_model(carol: User) -> None:
    assert AUTHORIZE.user_principal(carol).models == ()


def test_a_star_pattern_allows_every_model(carol: User) -> None:
    carol.groups.add(Group.objects.create(name="everything"))
    try:
        assert AUTHORIZE.user_principal(carol).models is None
    finally:
        Group.objects.filter(name="everything").delete()


def test_without_model_groups_every_user_may_use_every_model(carol: User) -> None:
    assert DjangoAuthorizer(Settings(), None).user_principal(carol).models is None


def test_the_manage_models_permission_makes_an_admin(carol: User) -> None:
    carol.user_permissions.add(Permission.objects.get(codename="manage_models", content_type__app_label="ollama_asgi"))
    carol = User.objects.get(pk=carol.pk)  # permissions are cached per instance
    principal = AUTHORIZE.user_principal(carol)
    assert principal.is_admin and principal.models is None


def test_staff_users_are_admins() -> None:
    assert AUTHORIZE.user_principal(User.objects.get(username="root")).is_admin


async def test_anonymous_users_get_no_principal() -> None:
    assert await AUTHORIZE({"type": "http", "headers": [], "user": AnonymousUser()}) is None
    assert await AUTHORIZE({"type": "http", "headers": []}) is None


async def test_api_keys_from_settings_need_no_database() -> None:
    authorize = DjangoAuthorizer(Settings.from_mapping({"api_keys": ("ci=ci-secret-key",)}), GROUPS)
    principal = await authorize({"type": "http", "headers": [(b"authorization", b"Bearer ci-secret-key")]})
    assert principal is not None and (principal.id, principal.source) == ("ci", "api_key")
