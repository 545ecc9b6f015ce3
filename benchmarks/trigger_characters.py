"""Which characters should open the completion menu of the `textDocument/completion` fallback
(dgemma_ls.server.COMPLETION_TRIGGERS). A script over held-out corpus files, not a test:

    python -m benchmarks.trigger_characters [--corpus data/corpus]

For each candidate: how often it is typed (model calls per 1000 typed characters; indentation
excluded, editors insert it) and how often code follows it on its line (at least 3 non-space
characters: a continuation the menu could offer; 0 % for a line end).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from benchmarks.common import RESULTS, markdown, write_result

CANDIDATES = ".([{,:= "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/corpus", help="the corpus whose held-out files are read")
    parser.add_argument("--out-json", default=str(RESULTS / "trigger_characters.json"))
    args = parser.parse_args()
    typed, count, followed = 0, collections.Counter(), collections.Counter()
    with open(Path(args.corpus) / "heldout.jsonl", encoding="utf-8") as lines:
        for line in lines:
            for row in json.loads(line)["text"].split("\n"):
                body = row.lstrip()
                typed += len(body) + 1
                for i, char in enumerate(body):
                    if char in CANDIDATES:
                        count[char] += 1
                        followed[char] += len(body[i + 1 :].strip()) >= 3
    rows = [[repr(c), f"{1000 * count[c] / typed:.1f}", f"{100 * followed[c] / max(1, count[c]):.0f} %"]
            for c in CANDIDATES]
    table = {"title": f"Candidate trigger characters over {typed} typed held-out characters",
             "header": ["character", "per 1000 typed", "code follows on its line"], "rows": rows}
    print(markdown(table))
    write_result(args.out_json, "trigger_characters", {"triggers": table})


if __name__ == "__main__":
    main()
