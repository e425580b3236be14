"""Where API key digests, JWT keys and the audit signing key live.

protocol   the `SecretStore` seam, shaped like Azure Key Vault secrets
localfile  the embedded file for laptops and tests (same behaviour)
keyvault   Azure Key Vault through the async SDK (workload identity on AKS)
factory    `open_store(settings)`: the backend the settings name
"""
