"""Mapping files: load (line marks), validate (pydantic), compile (templates, attribute paths); run both ways."""
