"""Every page of the app under streamlit.testing.v1.AppTest, on the run dirs of conftest.app_runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

PAGES = ("1_Runs.py", "2_Feature_browser.py", "3_IOI_evaluation.py", "4_Routing.py")


def _texts(elements) -> list[str]:
    return [e.value for e in elements]


@pytest.mark.parametrize("page", (None, *PAGES))
def test_every_page_opens_without_exception(app_test, page):
    at = app_test(page)
    assert at.title[0].value
