from __future__ import annotations

import httpx
import pytest

from ollama_asgi.context import choose_num_ctx, estimate_tokens, truncate_messages
from ollama_asgi.errors import GatewayError
from ollama_asgi.testing import EmulatorServer
from tests.conftest import AUTH

BUCKETS = (2048, 4096, 8192, 16384, 32768)


def choose(prompt: int, **kw: object):  # type: ignore[no-untyped-def]
    args = {"num_predict": -1, "buckets": BUCKETS, "cap": 32768, "loaded": None, "requested": None, "reserve": 1024}
    args.update(kw)
    return choose_num_ctx(prompt_tokens=prompt, **args)  # type: ignore[arg-type]


def test_estimates_grow_with_text_messages_and_images() -> None:
    small = estimate_tokens({"messages": [{"role": "user", "content": "hi"}]})
    large = estimate_tokens({"messages": [{"role": "user", "content": "word " * 1000}]})
    with_image = estimate_tokens({"messages": [{"role": "user", "content": "hi", "images": ["x"]}]})
    assert small < 50 < large
    assert 1000 <= large <= 1600
    assert with_image - small >= 500
    assert estimate_tokens({"input": ["a" * 400, "b"]}) >= 100  # the longest input decides


def test_smallest_bucket_that_fits_prompt_and_answer() -> None:
    assert choose(100).num_ctx == 2048
    assert choose(1500).num_ctx == 4096  # 1500 + 1024 reserved for the answer
    assert choose(100, num_predict=5000).num_ctx == 8192


def test_the_loaded_size_is_kept_when_it_fits() -> None:
    choice = choose(100, loaded=8192)
    assert (choice.num_ctx, choice.reason) == (8192, "sticky")
    assert choose(9000, loaded=8192).num_ctx == 16384  # too small: a reload is needed


def test_caps_bound_every_choice() -> None:
    assert choose(20000, cap=24000).num_ctx == 24000
    assert choose(100, requested=65536, cap=32768).num_ctx == 32768
    assert choose(100, requested=3000).num_ctx == 3000
    with pytest.raises(GatewayError) as info:
        choose(40000)
    assert info.value.status == 400 and "32768-token context window" in info.value.message


def test_truncation_keeps_system_prompt_and_last_question() -> None:
    body = {
        "messages": [{"role": "system", "content": "rules"}]
        + [{"role": "user", "content": "word " * 400} for _ in range(10)]
        + [{"role": "user", "content": "last"}]
    }
    dropped = truncate_messages(body, 1500)
    messages = body["messages"]
    assert dropped > 0 and estimate_tokens(body) <= 1500
    assert messages[0]["content"] == "rules" and messages[-1]["content"] == "last"


def test_truncation_leaves_the_clients_messages_as_they_were() -> None:
    sent = [{"role": "user", "content": "word " * 400} for _ in range(10)] + [{"role": "user", "content": "last"}]
    client = {"messages": sent}
    upstream = dict(client)  # what the gateway sends: a copy of the parsed body's top level
    assert truncate_messages(upstream, 1500) > 0
    assert len(client["messages"]) == 11 and client["messages"] is sent
    assert len(upstream["messages"]) < 11


def _word_tokenizer(path: str, words: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tokenizer.save(path)


def test_a_configured_tokenizer_counts_real_tokens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ollama_asgi.context import TokenCounter

    path = str(tmp_path / "tokenizer.json")
    word = "supercalifragilisticexpialidocious"
    _word_tokenizer(path, [word, "hello"])
    counter = TokenCounter((("tiny*", path),))
    body = {"messages": [{"role": "user", "content": " ".join([word] * 100)}]}
    assert counter.count(body, "tiny:latest") == 16 + 4 + 100  # template, message markers, one token a word
    assert counter.count(body, "other:latest") == estimate_tokens(body) > 800  # no tokenizer: the estimate
    broken = TokenCounter((("tiny*", str(tmp_path / "missing.json")),))
    assert broken.count(body, "tiny:latest") == estimate_tokens(body)  # unusable file: estimate, no crash


def test_a_huge_num_predict_is_clamped_to_the_largest_bucket_not_the_models_window() -> None:
    """max_tokens=1,000,000 is a client's "no limit"; sizing the context by it loaded the model at its
    whole window (131,072 here), which ran Ollama out of memory."""
    choice = choose(100, num_predict=1_000_000, cap=131072)
    assert (choice.num_ctx, choice.reason) == (32768, "bucket")
    assert choose(20000, num_predict=1_000_000, cap=131072).num_ctx == 32768  # the rest of it is the answer's


def test_a_prompt_past_the_buckets_still_gets_the_cap_with_the_reserve_for_its_answer() -> None:
    choice = choose(40000, num_predict=1_000_000, cap=131072)
    assert (choice.num_ctx, choice.needed) == (131072, 41024)


def test_max_tokens_past_the_window_loads_the_model_at_the_largest_bucket(
    emulator: EmulatorServer, llm_url: str
) -> None:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1_000_000,
        "stop": ["hi"],  # the emulator's answer (an echo) ends at once
    }
    answer = httpx.post(llm_url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 200
    (loaded,) = emulator.emulator.loaded_models().values()
    assert loaded.num_ctx == 32768  # not llama3.2's 131,072
