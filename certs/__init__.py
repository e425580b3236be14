"""Dev PKI: a local CA and the certificates it issues (see `certs.authority`)."""
