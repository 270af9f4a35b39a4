"""projects: what Label Studio calls a project, and the names that can never be paths."""

import pytest

from service.projects import project_key


@pytest.mark.parametrize("raw, key", [("12.1795892522", "12"), ({"id": 7, "title": "x"}, "7"), (3, "3"),
                                      (None, "default"), ("", "default"), ({"title": "no id"}, "default")])
def test_label_studio_references_become_project_names(raw, key):
    assert project_key(raw) == key


@pytest.mark.parametrize("raw", ["../etc", "/tmp/x", "-PER-", "a b", "x" * 65, {"id": "../1"}, "\ud800"])
def test_nothing_else_is_a_project(raw):
    with pytest.raises(ValueError, match="not a Label Studio project id"):
        project_key(raw)
