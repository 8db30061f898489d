"""Handler registration (tideflow.core.registry, SPEC §2, §3, §4, §8 hot reload)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from tideflow.core.registry import Registration, Registry, make_registration, validate_name
from tideflow.errors import HandlerRegistrationError, InvalidOptionError


def sync_handler(task: Any) -> Any:
    return None


async def async_handler(task: Any) -> Any:
    return None


def two_param_handler(task: Any, next: Any) -> Any:
    return None


async def async_two_param_handler(task: Any, next: Any) -> Any:
    return None


def star_args_handler(*args: Any) -> Any:
    return None


def task_and_star_args(task: Any, *rest: Any) -> Any:
    return None


def task_with_keyword_only(task: Any, *, flag: bool = False) -> Any:
    return None


def task_with_kwargs(task: Any, **kwargs: Any) -> Any:
    return None


class Service:
    def one(self, task: Any) -> Any:
        return None

    def two(self, task: Any, next: Any) -> Any:
        return None

    async def async_one(self, task: Any) -> Any:
        return None


class SyncCallable:
    def __call__(self, task: Any) -> Any:
        return None


class AsyncCallable:
    async def __call__(self, task: Any) -> Any:
        return None


class AsyncCallableWithNext:
    async def __call__(self, task: Any, next: Any) -> Any:
        return None


def reg(name: str = "job", spec: Any = sync_handler, **options: Any) -> Registration:
    return make_registration(name, spec, options)


# --- the forms of use() --------------------------------------------------------------------------
class TestForms:
    def test_function_form_gives_no_options(self) -> None:
        r = reg("send_email", sync_handler)
        assert r.name == "send_email"
        assert r.handler is sync_handler
        assert dict(r.options) == {}
        assert r.is_async is False
        assert r.takes_next is False
        assert r.max_concurrent is None
        assert r.description == ""
        assert r.requires == ()

    def test_options_dict_form(self) -> None:
        r = make_registration(
            "resize",
            {
                "handler": sync_handler,
                "timeout": 120,
                "max_retries": 2,
                "retry_interval": 30,
                "priority": 5,
            },
            {},
        )
        assert r.handler is sync_handler
        assert dict(r.options) == {
            "timeout": 120.0,
            "max_retries": 2,
            "retry_interval": 30.0,
            "priority": 5,
        }
        assert "handler" not in r.options

    def test_keyword_form_means_the_same_as_the_dict_form(self) -> None:
        by_keywords = reg("resize", sync_handler, timeout=120, max_retries=2)
        by_dict = make_registration(
            "resize", {"handler": sync_handler, "timeout": 120, "max_retries": 2}, {}
        )
        assert dict(by_keywords.options) == dict(by_dict.options)
        assert by_keywords == by_dict

    def test_all_per_type_options(self) -> None:
        r = reg(
            "report",
            sync_handler,
            timeout=300,
            requires=["high-memory", "gpu"],
            max_concurrent_tasks=2,
            description="monthly report",
            tag="reports",
            isolation="thread",
            retry_backoff="exponential",
            max_retry_interval=60,
            retry_jitter=False,
        )
        assert r.requires == ("gpu", "high-memory")
        assert r.max_concurrent == 2
        assert r.description == "monthly report"
        assert r.options["tag"] == "reports"
        assert r.options["retry_backoff"] == "exponential"

    def test_dict_form_and_keywords_together_are_refused(self) -> None:
        with pytest.raises(HandlerRegistrationError, match="job"):
            make_registration("job", {"handler": sync_handler}, {"timeout": 5})

    def test_dict_without_handler_is_refused(self) -> None:
        with pytest.raises(HandlerRegistrationError, match="handler"):
            make_registration("job", {"timeout": 5}, {})

    @pytest.mark.parametrize("spec", [None, 42, "sync_handler", b"x", ["f"]])
    def test_non_callable_is_refused(self, spec: Any) -> None:
        with pytest.raises(HandlerRegistrationError, match="callable"):
            make_registration("job", spec, {})

    def test_non_callable_inside_the_dict_is_refused(self) -> None:
        with pytest.raises(HandlerRegistrationError, match="callable"):
            make_registration("job", {"handler": "not a function"}, {})

    @pytest.mark.parametrize(
        "option", ["parameters", "output", "schema", "retries", "capabilities", "worker_id"]
    )
    def test_unknown_option_is_a_registration_error(self, option: str) -> None:
        with pytest.raises(HandlerRegistrationError) as info:
            reg("job", sync_handler, **{option: {}})
        assert option in str(info.value)
        assert "timeout" in str(info.value)  # the allowed names are listed

    @pytest.mark.parametrize("option", ["parameters", "output"])
    def test_fib_flow_schema_keys_in_the_dict_form_are_refused(self, option: str) -> None:
        with pytest.raises(HandlerRegistrationError, match=option):
            make_registration("job", {"handler": sync_handler, option: {"type": "object"}}, {})

    @pytest.mark.parametrize(
        "options",
        [
            {"priority": 21},
            {"timeout": 0},
            {"max_retries": -1},
            {"retry_backoff": "linear"},
            {"max_concurrent_tasks": 0},
            {"isolation": "fork"},
        ],
    )
    def test_bad_option_values_are_invalid_option_errors(self, options: dict[str, Any]) -> None:
        # the same error as a bad value at submit (SPEC §13); unknown NAMES stay registration
        # errors (above)
        for call in (
            lambda: make_registration("job", sync_handler, options),
            lambda: make_registration("job", {"handler": sync_handler, **options}, {}),
        ):
            with pytest.raises(InvalidOptionError) as info:
                call()
            assert not isinstance(info.value, HandlerRegistrationError)
            assert next(iter(options)) in str(info.value)
            assert "'job'" in str(info.value)

    def test_handler_without_a_positional_parameter_is_refused(self) -> None:
        def no_params() -> None:
            return None

        def keyword_only(*, task: Any) -> None:
            return None

        for handler in (no_params, keyword_only):
            with pytest.raises(HandlerRegistrationError, match="positional"):
                make_registration("job", handler, {})


class TestNames:
    @pytest.mark.parametrize("name", ["a", "send_email", "x.y-z:1", "n" * 200])
    def test_valid_names(self, name: str) -> None:
        assert validate_name(name) == name
        assert reg(name).name == name

    @pytest.mark.parametrize("name", ["", "   ", " lead", "trail ", None, 5, b"x", "n" * 201])
    def test_invalid_names(self, name: Any) -> None:
        with pytest.raises(HandlerRegistrationError):
            validate_name(name)
        with pytest.raises(HandlerRegistrationError):
            make_registration(name, sync_handler, {})


# --- what kind of handler ------------------------------------------------------------------------
class TestHandlerKind:
    @pytest.mark.parametrize(
        ("handler", "is_async"),
        [
            (sync_handler, False),
            (async_handler, True),
            (two_param_handler, False),
            (async_two_param_handler, True),
            (Service().one, False),
            (Service().async_one, True),
            (SyncCallable(), False),
            (AsyncCallable(), True),
            (AsyncCallableWithNext(), True),
            (lambda task: None, False),
        ],
        ids=lambda x: getattr(x, "__name__", type(x).__name__),
    )
    def test_async_detection(self, handler: Any, is_async: bool) -> None:
        assert reg("job", handler).is_async is is_async

    def test_partial_of_an_async_function_is_async(self) -> None:
        async def with_config(config: str, task: Any) -> None:
            return None

        r = reg("job", functools.partial(with_config, "cfg"))
        assert r.is_async is True
        assert r.takes_next is False

    @pytest.mark.parametrize(
        ("handler", "takes_next"),
        [
            (sync_handler, False),
            (async_handler, False),
            (two_param_handler, True),
            (async_two_param_handler, True),
            (Service().one, False),  # self is bound: one positional parameter left
            (Service().two, True),
            (SyncCallable(), False),
            (AsyncCallableWithNext(), True),
            (star_args_handler, True),  # can take (task, next)
            (task_and_star_args, True),
            (task_with_keyword_only, False),  # keyword-only is not positional
            (task_with_kwargs, False),
            (lambda task: None, False),
            (lambda task, nxt: None, True),
        ],
        ids=lambda x: getattr(x, "__name__", type(x).__name__),
    )
    def test_takes_next_follows_the_positional_parameters(
        self, handler: Any, takes_next: bool
    ) -> None:
        assert reg("job", handler).takes_next is takes_next


# --- the registry --------------------------------------------------------------------------------
class TestRegistry:
    def test_empty_registry(self) -> None:
        registry = Registry()
        assert dict(registry.snapshot()) == {}
        assert registry.get("a") is None
        assert registry.version == 0

    def test_add_get_and_version(self) -> None:
        registry = Registry()
        a, b = reg("a"), reg("b", async_handler)
        registry.add([a, b])
        assert registry.get("a") is a
        assert registry.get("b") is b
        assert set(registry.snapshot()) == {"a", "b"}
        assert registry.version == 1
        registry.add([reg("c")])
        assert registry.version == 2
        assert set(registry.snapshot()) == {"a", "b", "c"}

    def test_add_replaces_a_registration_of_the_same_name(self) -> None:
        registry = Registry()
        old = reg("a", sync_handler, timeout=1)
        new = reg("a", async_handler, timeout=2)
        registry.add([old])
        registry.add([new])
        assert registry.get("a") is new
        assert len(registry.snapshot()) == 1

    def test_remove_counts_what_was_registered(self) -> None:
        registry = Registry()
        registry.add([reg("a"), reg("b"), reg("c")])
        version = registry.version
        assert registry.remove(["a", "missing"]) == 1
        assert registry.get("a") is None
        assert set(registry.snapshot()) == {"b", "c"}
        assert registry.remove(["b", "b", "c"]) == 2  # a name counts once
        assert dict(registry.snapshot()) == {}
        assert registry.remove(["zzz"]) == 0
        assert registry.version > version

    def test_a_snapshot_taken_before_a_change_is_unchanged(self) -> None:
        registry = Registry()
        a = reg("a")
        registry.add([a])
        before = registry.snapshot()
        registry.add([reg("b")])
        registry.add([reg("a", async_handler)])
        assert set(before) == {"a"}
        assert before["a"] is a  # an attempt keeps the handler it started with
        registry.remove(["a"])
        assert before["a"] is a
        assert "a" not in registry.snapshot()
        assert registry.snapshot() is not before

    def test_snapshot_without_changes_is_stable(self) -> None:
        registry = Registry()
        registry.add([reg("a")])
        assert dict(registry.snapshot()) == dict(registry.snapshot())

    def test_registrations_are_immutable(self) -> None:
        r = reg("a")
        with pytest.raises(AttributeError):
            r.name = "b"  # type: ignore[misc]
