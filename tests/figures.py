"""One JSON line per measured test (RELIABILITY's figures): printed, and appended to
``test-artifacts/figures.jsonl`` so that a run leaves its table behind."""

import json
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def figure(test: str, **fields: Any) -> dict[str, Any]:
    line = {"test": test, **fields}
    text = json.dumps(line, default=str)
    print("\n" + text)
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "figures.jsonl").open("a") as fh:
        fh.write(text + "\n")
    return line
