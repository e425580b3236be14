"""Dangerous code, fenced (as pyca/cryptography fences its ``hazmat``).

A module here replaces part of a library that we do not own. Each says in its docstring
what it bypasses and which versions of that library it was checked against; each is
imported by exactly one module (an import-linter contract), and a version outside that
list fails a test before it can ship. Read it whole before changing it or the library.
"""
