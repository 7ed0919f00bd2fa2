"""One JSON line per measured test (RELIABILITY's figures), in the same format and file as the
fault harness's figures (``tests/harness/figures.py``): printed as ``FIGURE {...}`` and appended
to ``test-artifacts/figures.jsonl``."""

from typing import Any

from tests.harness.figures import Figure


def figure(test: str, **fields: Any) -> dict[str, Any]:
    line = Figure(test, **fields)
    line.emit()
    return dict(line)
