"""pytest, for the doctests of this folder: a family module the installed transformers cannot import (its family is
unavailable) is one skip naming the transformers version it needs, not a collection error."""

import pytest
from helpers.families import collect_unless_unavailable


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    return collect_unless_unavailable((yield), file_path.stem, file_path, parent)
