"""Runtime misuse in the error catalogue (issue #15): adapter state calls with bad names or in the wrong
state, calls with bad inputs, and wrappers used after they handed their base model back. Each case raises a
graphpeft error naming the cause and leaves every model exactly as it was (see ``tests/catalogue.py``)."""

from __future__ import annotations

import pytest
from catalogue import Case, check_case, make_world

from graphpeft.errors import AdapterError

CASES = [
    # ---------------------------------------------------------------- adapter names and activation
    Case("set_adapter_twice_the_same_name", lambda w: w.wrapped.set_adapter(["default", "default"]), AdapterError, "names 'default' twice"),
    Case("set_adapter_empty_list", lambda w: w.wrapped.set_adapter([]), AdapterError, "disable_adapter()"),
    Case("set_adapter_with_an_int", lambda w: w.wrapped.set_adapter(3), AdapterError, "got 3"),
    Case("set_adapter_with_none", lambda w: w.wrapped.set_adapter(None), AdapterError, "got None"),
    Case("set_adapter_list_with_a_non_string", lambda w: w.wrapped.set_adapter(["default", 7]), AdapterError, "got 7"),
    Case("merge_unknown_adapter", lambda w: w.wrapped.merge(["nope"]), AdapterError, "no adapter named 'nope'"),
    Case("merge_the_same_adapter_twice", lambda w: w.wrapped.merge(["default", "default"]), AdapterError, "names 'default' twice"),
    Case("delete_adapter_with_an_int", lambda w: w.wrapped.delete_adapter(3), AdapterError, "got 3"),
    Case("delete_unknown_adapter", lambda w: w.wrapped.delete_adapter("defualt"), AdapterError, "did you mean 'default'"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return make_world(tmp_path_factory)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_raises_named_error_and_leaves_model_unchanged(case, shared, tmp_path, capfd):
    check_case(case, shared, tmp_path, capfd)
