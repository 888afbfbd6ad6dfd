"""The traffic model: each principal's next model, predicted from its own sequence, else the pool's."""

from __future__ import annotations

from ollama_asgi.traffic import TrafficModel


def test_predicts_the_usual_next_model_once_seen_enough() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for model in ["embed", "chat"] * 3:
        traffic.observe(model, cold=False)
    prediction = traffic.predict("embed")
    assert prediction is not None and prediction.model == "chat" and prediction.confidence == 1.0


def test_no_prediction_below_the_confidence_threshold() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for model in ["a", "b", "a", "c", "a", "b", "a", "c"]:
        traffic.observe(model, cold=False)
    assert traffic.predict("a") is None  # b and c each half of the time


def test_no_prediction_without_enough_evidence() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=3)
    for model in ["a", "b", "a", "b"]:
        traffic.observe(model, cold=False)
    assert traffic.predict("a") is None  # a → b seen twice: not yet three times


def test_old_transitions_leave_the_window() -> None:
    traffic = TrafficModel(window=4, threshold=0.6, min_observations=2)
    for model in ["a", "b"] * 5 + ["a", "c"] * 5:
        traffic.observe(model, cold=False)
    prediction = traffic.predict("a")
    assert prediction is not None and prediction.model == "c"


def test_interleaved_principals_do_not_make_transitions_between_each_other() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for _ in range(4):  # alice goes a → b, bob goes c → d, their requests alternate
        traffic.observe("a", cold=False, principal="alice")
        traffic.observe("c", cold=False, principal="bob")
        traffic.observe("b", cold=False, principal="alice")
        traffic.observe("d", cold=False, principal="bob")
    alice, bob = traffic.predict("a", "alice"), traffic.predict("c", "bob")
    assert alice is not None and alice.model == "b" and alice.confidence == 1.0
    assert bob is not None and bob.model == "d" and bob.confidence == 1.0


def test_each_principal_gets_its_own_prediction_for_the_same_model() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for _ in range(3):
        for model in ("embed", "small"):
            traffic.observe(model, cold=False, principal="pipeline")
        for model in ("embed", "big"):
            traffic.observe(model, cold=False, principal="search")
    pipeline, search = traffic.predict("embed", "pipeline"), traffic.predict("embed", "search")
    assert pipeline is not None and pipeline.model == "small"
    assert search is not None and search.model == "big"


def test_a_principal_with_evidence_of_its_own_is_not_overruled_by_the_pool() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for principal in ("p1", "p2", "p3"):
        for model in ("a", "b") * 3:
            traffic.observe(model, cold=False, principal=principal)
    for model in ("a", "b", "a", "c", "a"):  # odd: half b, half c after a
        traffic.observe(model, cold=False, principal="odd")
    assert traffic.predict("a", "odd") is None  # its own evidence says unsure, whatever the others do


def test_a_new_principal_is_predicted_from_the_pool() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for principal in ("p1", "p2"):
        for model in ("embed", "chat"):
            traffic.observe(model, cold=False, principal=principal)
    traffic.observe("embed", cold=False, principal="newcomer")
    prediction = traffic.predict("embed", "newcomer")
    assert prediction is not None and prediction.model == "chat" and prediction.evidence == 2


def test_the_least_recent_principal_is_forgotten_past_the_cap() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2, max_principals=2)
    for model in ("a", "b") * 2:
        traffic.observe(model, cold=False, principal="old")
    for principal in ("p1", "p2"):
        traffic.observe("x", cold=False, principal=principal)
    assert traffic.principals == 2
    assert traffic.predict("a", "old") is None  # its transitions left the pool with it


def test_seeing_a_principal_again_keeps_it_tracked() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2, max_principals=2)
    for model in ("a", "b") * 2:
        traffic.observe(model, cold=False, principal="regular")
    traffic.observe("x", cold=False, principal="p1")
    traffic.observe("a", cold=False, principal="regular")
    traffic.observe("x", cold=False, principal="p2")  # p1 is now the least recent
    prediction = traffic.predict("a", "regular")
    assert prediction is not None and prediction.model == "b"


def test_next_uses_follow_each_principal_s_predicted_sequence() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for step, model in enumerate(["a", "b", "c"] * 3):  # one request every 10 s
        traffic.observe(model, cold=False, principal="pipeline", now=10.0 * step)
    uses = traffic.next_uses(now=80.0, steps=2)  # it just asked for c: a in 10 s, then b in 20 s
    assert uses == {"a": 10.0, "b": 20.0}


def test_a_principal_gone_quiet_expects_nothing() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for step, model in enumerate(["a", "b"] * 3):
        traffic.observe(model, cold=False, principal="pipeline", now=float(step))
    assert traffic.next_uses(now=5.0) != {}
    assert traffic.next_uses(now=5.0 + 100.0, idle_gaps=10.0, quiet_after=30.0) == {}


def test_the_soonest_of_several_principals_counts() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for step in range(6):  # every 100 s, last at 500: m is due at 600
        traffic.observe(["m", "y"][step % 2], cold=False, principal="slow", now=100.0 * step)
    for step in range(6):  # every second, last at 595: m is due at 596
        traffic.observe(["m", "z"][step % 2], cold=False, principal="fast", now=590.0 + step)
    assert traffic.next_uses(now=595.0, steps=1)["m"] == 1.0


def test_hits_and_misses_are_counted() -> None:
    traffic = TrafficModel()
    traffic.observe("a", cold=True)
    traffic.warmed.add("b")
    traffic.observe("b", cold=False)
    assert (traffic.misses, traffic.hits) == (1, 1)
