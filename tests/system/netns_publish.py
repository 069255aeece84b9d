"""Publish model files into the test's object store, from inside a namespace (run with `-m`).

The store's address exists only inside the test's namespaces, so the test process cannot
publish itself: it runs this in the client namespace. The bucket is created first, waiting
for the store (moto, started just before) to answer.

    python -m tests.system.netns_publish s3://bucket/prefix model.ubj:churn:1.0.0 ...
"""

from __future__ import annotations

import argparse
import time

from botocore.exceptions import BotoCoreError

from coordinator.registry import open_registry
from testkit.s3_server import create_bucket
from tests.helpers import FEATURES

WAIT_S = 30.0


def _create_bucket(endpoint: str, bucket: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            create_bucket(endpoint, bucket)
            return
        except BotoCoreError:  # moto not listening yet (connection refused), until the deadline
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True, help="http://host:port of the store")
    parser.add_argument("registry", help="s3://bucket/prefix")
    parser.add_argument("artifacts", nargs="+", help="path:model_type:version")
    args = parser.parse_args(argv)
    _create_bucket(args.endpoint, args.registry.removeprefix("s3://").split("/", 1)[0])
    registry = open_registry(args.registry)
    for spec in args.artifacts:
        path, model_type, version = spec.rsplit(":", 2)
        registry.publish(path, model_type, version, features=FEATURES, metrics={"f1": 0.9})


if __name__ == "__main__":
    main()
