"""Creates the S3 bucket Facemint stores into, once: docker-compose.yml runs it (the `s3-bucket` service, in the
facemint image) before the api and the workers start, since the S3 backend never creates its bucket.

It reads the app's own settings variables (FACEMINT_S3_BUCKET, FACEMINT_S3_ENDPOINT_URL, FACEMINT_S3_REGION) and
boto3's credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). A bucket that exists already is left as it is.
tests/test_compose.py runs it against a real SeaweedFS server."""

from __future__ import annotations

import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

# Ours already. BucketAlreadyExists (the name is someone else's) is an error: the app could not write there.
ALREADY_OURS = "BucketAlreadyOwnedByYou"


def create_bucket(bucket: str, *, endpoint_url: str | None, region: str | None) -> bool:
    """True when the bucket was created, False when it was there already."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        # The S3 server may still be starting: retry refused connections and 5xx for a while.
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 10}),
    )
    arguments: dict[str, object] = {"Bucket": bucket}
    if region and region != "us-east-1":  # AWS refuses an explicit us-east-1 constraint
        arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**arguments)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == ALREADY_OURS:
            return False
        raise
    return True


def main() -> int:
    bucket = os.environ.get("FACEMINT_S3_BUCKET", "")
    if not bucket:
        sys.stderr.write("FACEMINT_S3_BUCKET is not set\n")
        return 2
    created = create_bucket(
        bucket,
        endpoint_url=os.environ.get("FACEMINT_S3_ENDPOINT_URL") or None,
        region=os.environ.get("FACEMINT_S3_REGION") or None,
    )
    sys.stderr.write(f"bucket {bucket}: {'created' if created else 'already there'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
