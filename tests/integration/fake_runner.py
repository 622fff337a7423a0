"""What a GitHub Actions runner does, from the coordinator's point of view (the real one cannot
be downloaded here): start with ``--jitconfig``, wait for GitHub to hand it a job, run it, exit.

The JIT config is the stand-in's (github_standin.py): base64 JSON with its URL and the runner's
id. Without a job it waits forever, as the real runner does; ``--record FILE`` appends the
config it was started with, so a test can check the runner got it.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.request


def call(url: str) -> dict[str, object]:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, object] = json.loads(resp.read() or b"{}")
        return answer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jitconfig", required=True)
    parser.add_argument("--record")
    args = parser.parse_args()
    config = json.loads(base64.b64decode(args.jitconfig))
    if args.record:
        with open(args.record, "a") as f:
            f.write(args.jitconfig + "\n")
    base = f"{config['url']}/_runner/{config['runner_id']}"
    print(f"runner {config['name']} listening for jobs", flush=True)
    while True:
        answer = call(f"{base}/poll")
        if answer.get("gone"):
            print("runner removed", flush=True)
            return 1
        if answer.get("job"):
            break
        time.sleep(0.2)
    print(f"running job {answer['job']}", flush=True)
    time.sleep(float(str(answer.get("duration", 0.3))))
    call(f"{base}/done")
    print(f"job {answer['job']} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
