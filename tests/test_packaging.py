"""The distribution keeps what pyproject.toml promises."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_license_file_is_the_apache_2_text_that_pyproject_declares():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert " ".join(text.split()[:4]) == "Apache License Version 2.0,"
    # The full text, not a stub: all nine sections of the terms and the appendix.
    for heading in ["TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "END OF TERMS AND CONDITIONS",
                    "APPENDIX: How to apply the Apache License to your work."]:
        assert heading in text
    for section in range(1, 10):
        assert f"\n   {section}. " in text, f"section {section} missing"
