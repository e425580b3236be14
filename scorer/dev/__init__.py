"""Development tools: the demo models, trained from data that ships with scikit-learn.

Not part of what production installs: the wheel leaves this package out (see
pyproject.toml), so only a checkout (`make install`, an editable install) has it.
"""
