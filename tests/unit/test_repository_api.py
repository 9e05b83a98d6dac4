"""The repository API's load parameters, whatever a client sends: a model configuration to
load, or a refusal the client is told of (an ArrowsmithError), never another exception."""

import json
from typing import Any

from arrowsmith.config import ModelConfig
from arrowsmith.errors import ArrowsmithError, InvalidInputError, ModelNotFoundError
from arrowsmith.serving.repository_api import RepositoryApi
from hypothesis import given, settings
from hypothesis import strategies as st

KNOWN = ModelConfig("models:/wine@champion", name="wine", max_batch_size=8)

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SETTINGS = st.dictionaries(
    st.sampled_from(
        ["uri", "max_batch_size", "max_batch_delay_ms", "max_queue_size", "versions", "x"]
    ),
    JSON_VALUES,
    max_size=4,
)


class Repository:
    """Stands for the model repository: knows `wine`, records loads."""

    def __init__(self) -> None:
        self.loaded: list[ModelConfig] = []

    def config(self, name: str) -> ModelConfig | None:
        return KNOWN if name == KNOWN.name else None

    def load(self, config: ModelConfig, beside: tuple[ModelConfig, ...] | None = None) -> None:
        self.loaded.append(config)


def api(repository: Repository) -> RepositoryApi:
    return RepositoryApi(repository, None, "explicit", None)  # type: ignore[arg-type]


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    name=st.sampled_from(["wine", "other", ""]),
    parameters=st.dictionaries(
        st.sampled_from(["uri", "config", "other"]),
        JSON_VALUES | SETTINGS.map(json.dumps),
        max_size=3,
    ),
)
def test_any_parameters_load_or_are_refused(name: str, parameters: dict[str, Any]) -> None:
    repository = Repository()
    try:
        api(repository).load(name, parameters)
    except ArrowsmithError:
        assert repository.loaded == []
        return
    [config] = repository.loaded
    assert config.name == name and isinstance(config.uri, str) and config.uri


def test_a_known_model_is_loaded_again_with_its_settings() -> None:
    repository = Repository()
    api(repository).load("wine", {})
    api(repository).load("wine", {"config": '{"max_batch_size": 16}'})
    assert repository.loaded == [KNOWN, ModelConfig(KNOWN.uri, name="wine", max_batch_size=16)]


def test_refusals_name_what_is_wrong() -> None:
    repository = Repository()
    for parameters, error, words in (
        ({}, ModelNotFoundError, "give its URI in the 'uri' parameter"),
        ({"uri": 3}, InvalidInputError, "'uri' parameter must be a model URI"),
        ({"config": "{"}, InvalidInputError, "'config' parameter is not JSON"),
        ({"config": '{"name": "x"}'}, InvalidInputError, "unknown settings ['name']"),
        ({"uri": "m", "config": '{"versions": 3}'}, InvalidInputError, "must be a list"),
        ({"uri": "m", "config": '{"versions": ["a"]}'}, InvalidInputError, "not valid"),
    ):
        try:
            api(repository).load("other", parameters)
        except error as refused:
            assert words in refused.message, refused.message
        else:
            raise AssertionError(f"{parameters} was not refused")
