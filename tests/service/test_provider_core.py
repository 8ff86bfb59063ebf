"""The provider as one core with protocol faces: registry, offline API docs, the native face unchanged."""

from __future__ import annotations

import httpx
import pytest

from loadtests.service.psp.faces import FACES, face_class
from sim.errors import ConfigError


def test_docs_page_loads_its_assets_from_the_provider_itself(services) -> None:
    """/docs works without internet: Swagger UI's script and CSS are served by the provider, not a CDN."""
    html = httpx.get(services.provider_url + "/docs", timeout=5).text
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    script = next(part.split('"')[0] for part in html.split('src="')[1:] if "swagger" in part)
    url = script if script.startswith("http") else services.provider_url + script
    assert url.startswith(services.provider_url)
    assert httpx.get(url, timeout=5).status_code == 200


def test_healthz_names_the_faces_served(services) -> None:
    """The native face is always there: the reference checkout speaks it."""
    assert "native" in httpx.get(services.provider_url + "/healthz", timeout=5).json()["faces"]


def test_unknown_face_is_a_usage_error(tmp_path) -> None:
    """A misspelt --psp names the faces there are."""
    from loadtests.service.runner import start_services

    with pytest.raises(ConfigError, match="unknown PSP face 'alipai'"):
        start_services(None, tmp_path, 60.0, faces=("alipai",))
    with pytest.raises(ValueError, match="expected one of"):
        face_class("alipai")
    assert "native" in FACES
