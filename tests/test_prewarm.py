from __future__ import annotations

from ollama_asgi.prewarm import TrafficModel


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


def test_old_transitions_leave_the_window() -> None:
    traffic = TrafficModel(window=4, threshold=0.6, min_observations=2)
    for model in ["a", "b"] * 5 + ["a", "c"] * 5:
        traffic.observe(model, cold=False)
    prediction = traffic.predict("a")
    assert prediction is not None and prediction.model == "c"


def test_hits_and_misses_are_counted() -> None:
    traffic = TrafficModel()
    traffic.observe("a", cold=True)
    traffic.warmed.add("b")
    traffic.observe("b", cold=False)
    assert (traffic.misses, traffic.hits) == (1, 1)
