"""How ``selftest_count.json`` was made: the ``selftest.json`` of ``tests/test_mergeguard.py::
test_protect_end_to_end_on_the_toy_world`` (MergeGuard at its defaults on the toy world's count fine-tune, against
rev, every adaptive attack), with local paths replaced by ``toy-world/...`` names, a license, and a fixed date.

    python tests/data/make_selftest_fixture.py PATH/TO/protected/selftest.json
"""

import json
import re
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "selftest_count.json"


def sanitize(text: str) -> str:
    text = re.sub(r'"[^"]*/toyworld/[0-9a-f]+/models/(\w+)"', r'"toy-world/\1"', text)
    text = re.sub(r'"[^"]*/toyworld/[0-9a-f]+/tasks"', '"toy-world-tasks"', text)
    return re.sub(r'"[^"]*/work/0-mergeguard/mergeguard-protected"', '"work/0-mergeguard/mergeguard-protected"', text)


if __name__ == "__main__":
    report = json.loads(sanitize(Path(sys.argv[1]).read_text()))
    report["created"] = "2026-12-01T00:00:00+00:00"
    report["inputs"]["license"] = "apache-2.0"  # the card carries the source model's license over
    report["release"] = {"name": "acme/count-protected", "forced": False}
    FIXTURE.write_text(json.dumps(report, indent=2) + "\n")
