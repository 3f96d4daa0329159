"""What makes two requests the same: the canonical request (sorted, without what does not change the answer),
and the tenant."""

from __future__ import annotations

from typing import Any

from thinktank.accounts.principal import Principal
from thinktank.cache.keys import canonical, exact_key, last_question, scope_key, tenant_of
from thinktank.store.tables import SYSTEM_USER_ID
from thinktank.types import ChatRequest


def request(**more: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "gpt", "messages": [{"role": "user", "content": "hi"}], **more})


def key(req: ChatRequest, tenant: str = "user:a") -> str:
    return exact_key(tenant, canonical(req))


def test_the_key_ignores_order_and_what_does_not_change_the_answer() -> None:
    a = ChatRequest.model_validate_json('{"temperature": 0.5, "model": "gpt", "messages": [{"content": "hi", '
                                        '"role": "user"}]}')
    b = request(temperature=0.5, stream=True, stream_options={"include_usage": True}, user="u1", tags=["x"],
                cache=True, metadata={"k": "v"})
    assert key(a) == key(b) and len(key(a)) == 64


def test_the_key_changes_with_what_changes_the_answer() -> None:
    base = key(request())
    for change in ({"temperature": 0.0}, {"top_p": 0.9}, {"max_tokens": 5}, {"seed": 3}, {"stop": "x"},
                   {"n": 2}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
                   {"response_format": {"type": "json_object"}}, {"knowledge_bases": ["handbook"]},
                   {"some_new_parameter": 1}, {"messages": [{"role": "user", "content": "hi!"}]}):
        assert key(request(**change)) != base, change
    assert key(request(), "user:b") != base and key(request(), "admin-key") != base


def test_tenants() -> None:
    assert tenant_of(Principal(user_id="usr_1", role="member")) == "user:usr_1"
    assert tenant_of(Principal(user_id="usr_1", role="member", key_id="key_1")) == "user:usr_1"
    admin_key = Principal(user_id=SYSTEM_USER_ID, role="admin", is_admin_key=True)
    admin_made_key = Principal(user_id=SYSTEM_USER_ID, role="admin", key_id="key_2")
    assert tenant_of(admin_key) == "admin-key" != tenant_of(admin_made_key)


def test_the_scope_is_everything_but_the_last_question() -> None:
    one = request(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}])
    two = request(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "q2"}])
    other = request(messages=[{"role": "system", "content": "t"}, {"role": "user", "content": "q1"}])
    assert scope_key("user:a", canonical(one)) == scope_key("user:a", canonical(two))
    assert scope_key("user:a", canonical(one)) != scope_key("user:a", canonical(other))
    assert scope_key("user:a", canonical(one)) != scope_key("user:b", canonical(one))
    assert scope_key("user:a", canonical(one)) != key(one)


def test_the_question_is_the_last_user_text() -> None:
    assert last_question(request().messages) == "hi"
    parts = request(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                                           "text": "b"}]}])
    assert last_question(parts.messages) == "ab"
    image = request(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert last_question(image.messages) is None
    tool = request(messages=[{"role": "user", "content": "q"}, {"role": "tool", "content": "r", "tool_call_id": "1"}])
    assert last_question(tool.messages) is None
