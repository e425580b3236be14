from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import Forbidden, ModelNotFound
from gateway.identity.principal import Principal
from gateway.policy import AccessPolicy, PolicyError, RouteTable

ROOT = Path(__file__).resolve().parents[2]
ROUTES = """
[upstreams.cpu]
url = "http://127.0.0.1:9001"
[models.iris]
upstream = "cpu"
[models.wine]
upstream = "cpu"
max_instances = 4
"""


def principal(*scopes: str) -> Principal:
    return Principal(subject="s", credential="api_key", scopes=frozenset(scopes))


@pytest.fixture
def routes(tmp_path: Path) -> RouteTable:
    path = tmp_path / "routes.toml"
    path.write_text(ROUTES)
    return RouteTable.load(path)


def test_shipped_policies_load() -> None:
    routes = RouteTable.load(ROOT / "policies" / "routes.toml")
    AccessPolicy.load(ROOT / "policies" / "access.toml", routes)
    assert set(routes.models) == {"digits", "iris"}
    assert routes.resolve("digits").upstream.kind == "gpu"
    assert routes.resolve("digits").upstream.timeout_s > routes.resolve("iris").upstream.timeout_s


def test_routes_resolve_exact_names_only(routes: RouteTable) -> None:
    assert routes.resolve("wine").max_instances == 4
    assert str(routes.resolve("iris").upstream.url) == "http://127.0.0.1:9001/"
    for name in ["IRIS", "iris ", "iris/", "../iris", "iris%00", ""]:
        with pytest.raises(ModelNotFound):
            routes.resolve(name)


def test_access_is_denied_by_default(tmp_path: Path, routes: RouteTable) -> None:
    path = tmp_path / "access.toml"
    path.write_text('[scopes]\n"models:iris" = ["iris"]\n"models:all" = ["*"]\n')
    access = AccessPolicy.load(path, routes)
    assert access.allows(principal("models:iris"), "iris")
    assert not access.allows(principal("models:iris"), "wine")
    assert not access.allows(principal(), "iris")
    assert not access.allows(principal("iris"), "iris")  # a model name is not a scope
    assert access.allows(principal("models:all"), "wine")
    with pytest.raises(Forbidden):
        access.authorize(principal("models:iris"), "wine")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[upstreams.cpu]\nurl = "http://x"\n[models.iris]\nupstream = "gpu"\n',
            "unknown upstream",
        ),
        (
            '[upstreams.cpu]\nurl = "http://x"\n[models."bad/name"]\nupstream = "cpu"\n',
            "invalid model name",
        ),
        ('[upstreams.cpu]\nurl = "http://x"\ntimeout = 3\n[models]\n', "Extra inputs"),
        ('[upstreams.cpu]\nurl = "ftp://x"\n[models]\n', "URL scheme"),
        ("not toml [", "Expected"),
    ],
)
def test_invalid_routes_fail_with_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        RouteTable.load(path)


def test_access_policy_naming_an_unknown_model_fails(tmp_path: Path, routes: RouteTable) -> None:
    path = tmp_path / "access.toml"
    path.write_text('[scopes]\n"x" = ["iris", "nosuch"]\n')
    with pytest.raises(PolicyError, match="nosuch"):
        AccessPolicy.load(path, routes)


def test_missing_policy_file_fails(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        RouteTable.load(tmp_path / "none.toml")


def test_unknown_scoregate_environment_variables_are_named() -> None:
    from gateway.settings import unknown_environment

    env = {
        "SCOREGATE_TLS_PROFLE": "modern",  # typo
        "SCOREGATE_TLS_PROFILE": "modern",
        "SCOREGATE_API_KEY": "x",
        "SCOREGATE_SCORER_PORT": "9001",
        "HOME": "/root",
    }
    assert unknown_environment(env) == ["SCOREGATE_TLS_PROFLE"]


def test_cli_refuses_to_start_with_a_mistyped_setting() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "list"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "SCOREGATE_MAX_BODY_BYTE": "5"},
    )
    assert out.returncode == 2
    assert "SCOREGATE_MAX_BODY_BYTE" in out.stderr
