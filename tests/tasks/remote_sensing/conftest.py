import pytest


@pytest.fixture(autouse=True)
def rs_cache(tmp_path_factory, monkeypatch):
    """Generated scenes go to a temporary cache shared by the tests, never the user's."""
    monkeypatch.setenv("ARCHFORGE_DATA", str(tmp_path_factory.getbasetemp() / "archforge_data"))
