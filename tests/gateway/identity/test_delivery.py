"""`--deliver-to` URLs: only a Key Vault secret, named as Azure allows, and nothing else."""

from __future__ import annotations

import pytest

from gateway.identity.delivery import DeliveryTarget, DeliveryTargetError, parse_target


@pytest.mark.parametrize(
    ("url", "vault_url", "name"),
    [
        (
            "https://consumer.vault.azure.net/secrets/iris-client-key",
            "https://consumer.vault.azure.net",
            "iris-client-key",
        ),
        (
            "https://Team-KV-01.Vault.Azure.Net/secrets/K1",
            "https://team-kv-01.vault.azure.net",
            "K1",
        ),
        ("https://kv1.vault.azure.cn/secrets/a", "https://kv1.vault.azure.cn", "a"),
        (
            "https://kv1.vault.usgovcloudapi.net/secrets/a",
            "https://kv1.vault.usgovcloudapi.net",
            "a",
        ),
        (
            "https://abc.vault.azure.net/secrets/" + "n" * 127,
            "https://abc.vault.azure.net",
            "n" * 127,
        ),
        (
            "https://" + "a" * 24 + ".vault.azure.net/secrets/x",
            "https://" + "a" * 24 + ".vault.azure.net",
            "x",
        ),
    ],
)
def test_key_vault_secret_urls_are_accepted(url: str, vault_url: str, name: str) -> None:
    target = parse_target(url)
    assert target == DeliveryTarget(vault_url, name)
    assert target.url == f"{vault_url}/secrets/{name}"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "consumer.vault.azure.net/secrets/k",
        "http://consumer.vault.azure.net/secrets/k",  # not TLS
        "HTTPS://consumer.vault.azure.net/secrets/k",
        "https://consumer.vault.azure.net.evil.example/secrets/k",  # a suffix match only
        "https://evil.example/consumer.vault.azure.net/secrets/k",
        "https://vault.azure.net/secrets/k",  # no vault name
        "https://a.b.vault.azure.net/secrets/k",  # a sub-domain is no vault
        "https://consumer.managedhsm.azure.net/secrets/k",
        "https://consumer.vault.azure.net:443/secrets/k",  # no port, even the default
        "https://user:pw@consumer.vault.azure.net/secrets/k",
        "https://consumer.vault.azure.net/secrets/k/",
        "https://consumer.vault.azure.net/secrets/k/0123456789abcdef0123456789abcdef",
        "https://consumer.vault.azure.net/secrets/k?api-version=7.4",
        "https://consumer.vault.azure.net/secrets/k#x",
        "https://consumer.vault.azure.net/secrets/",
        "https://consumer.vault.azure.net/keys/k",
        "https://consumer.vault.azure.net/secrets/../keys/k",
        "https://consumer.vault.azure.net/secrets/k%2F1",
        "https://consumer.vault.azure.net/secrets/k_1",  # underscores are not allowed
        "https://consumer.vault.azure.net/secrets/" + "n" * 128,
        "https://ab.vault.azure.net/secrets/k",  # vault names have 3 to 24 characters
        "https://" + "a" * 25 + ".vault.azure.net/secrets/k",
        "https://1kv.vault.azure.net/secrets/k",  # starts with a letter
        "https://kv-.vault.azure.net/secrets/k",  # ends with a letter or digit
        "https://k--v.vault.azure.net/secrets/k",  # no two hyphens in a row
        "https://consumer.vault.azure.net/secrets/k\n",
        " https://consumer.vault.azure.net/secrets/k",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(DeliveryTargetError):
        parse_target(url)
