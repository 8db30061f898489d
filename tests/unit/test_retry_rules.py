"""Which failures retry (issue 11, part 5): retry_on / no_retry_on and PermanentError, as
classified by a registration (tideflow.core.registry); no database."""

from __future__ import annotations

from typing import Any

import pytest

import tideflow
from tideflow.core.lifecycle import NoRetry
from tideflow.core.registry import make_registration
from tideflow.errors import HandlerRegistrationError, InvalidOptionError, PermanentError


class CardDeclined(PermanentError):
    pass


class Flaky(ConnectionError):
    pass


def handler(task: Any) -> None:
    return None


def path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_without_rules_everything_but_permanent_error_is_retried() -> None:
    reg = make_registration("job", handler, {})
    assert reg.no_retry(ValueError("x")) is None
    assert reg.no_retry(Flaky()) is None
    assert reg.no_retry(PermanentError("stop")) == NoRetry(path(PermanentError), "PermanentError")
    assert reg.no_retry(CardDeclined("no")) == NoRetry(path(CardDeclined), "PermanentError")


def test_permanent_error_is_exported() -> None:
    assert tideflow.PermanentError is PermanentError
    assert "PermanentError" in tideflow.__all__


def test_retry_on_retries_only_its_classes_and_their_subclasses() -> None:
    reg = make_registration("job", handler, {"retry_on": (ConnectionError, TimeoutError)})
    assert reg.no_retry(ConnectionError()) is None
    assert reg.no_retry(Flaky()) is None  # a subclass
    assert reg.no_retry(TimeoutError()) is None
    assert reg.no_retry(KeyError("k")) == NoRetry("builtins.KeyError", "retry_on")


def test_a_single_class_is_accepted() -> None:
    reg = make_registration("job", handler, {"no_retry_on": KeyError})
    assert reg.options["no_retry_on"] == (KeyError,)
    assert reg.no_retry(KeyError("k")) == NoRetry("builtins.KeyError", "no_retry_on")
    assert reg.no_retry(ValueError()) is None


def test_no_retry_on_wins_over_retry_on_and_permanent_error_over_both() -> None:
    reg = make_registration(
        "job", handler, {"retry_on": [OSError], "no_retry_on": [FileNotFoundError]}
    )
    assert reg.no_retry(OSError()) is None
    assert reg.no_retry(FileNotFoundError()) == NoRetry("builtins.FileNotFoundError", "no_retry_on")

    class RetryablePermanent(PermanentError, OSError):
        pass

    assert reg.no_retry(RetryablePermanent()) == NoRetry(path(RetryablePermanent), "PermanentError")


@pytest.mark.parametrize(
    "value",
    [
        "ValueError",
        ValueError("an instance, not a class"),
        (ValueError, "KeyError"),
        (),
        [],
        int,
        KeyboardInterrupt,  # not an Exception: never caught as a handler failure
        None,
    ],
)
@pytest.mark.parametrize("option", ["retry_on", "no_retry_on"])
def test_a_bad_value_is_an_invalid_option_naming_it(option: str, value: Any) -> None:
    with pytest.raises(InvalidOptionError, match=f"handler 'job'.*option '{option}'"):
        make_registration("job", handler, {option: value})


def test_an_empty_rule_says_what_to_do_instead() -> None:
    with pytest.raises(InvalidOptionError, match="PermanentError or set max_retries=1"):
        make_registration("job", handler, {"retry_on": ()})


def test_the_same_class_in_both_rules_is_refused() -> None:
    with pytest.raises(InvalidOptionError, match="KeyError is in both retry_on and no_retry_on"):
        make_registration("job", handler, {"retry_on": KeyError, "no_retry_on": (KeyError,)})


def test_rules_are_registration_options_not_task_options() -> None:
    tm = tideflow.TaskManager()
    try:
        tm.use("job", handler, retry_on=(KeyError,))
        info = tm.get_task_info("job")
        assert info is not None
        assert info.options["retry_on"] == (KeyError,)
        with pytest.raises(InvalidOptionError, match="unknown option"):
            tm.submit("job", None, retry_on=(KeyError,))
        with pytest.raises(HandlerRegistrationError, match="unknown option"):
            tm.use("other", handler, retry_for=(KeyError,))
        assert tm.get_tasks() == []
    finally:
        tm.close()
