"""Development tools: `scoregate demo` and the dev token issuer.

Not part of what production installs: the wheel leaves this package out (see
pyproject.toml), so only a checkout (`make install`, an editable install) has it.
"""
