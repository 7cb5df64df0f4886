"""intstream info: a store's metadata as JSON."""

from __future__ import annotations

import click

from . import Command, options
from .common import emit, stage, upstream


@click.command(cls=Command)
@click.argument("store", required=False)
@options.debug
@stage("info")
def info(store):
    """Print the metadata of STORE (or of the upstream manifest's store) as one JSON line.

    STORE is a path or a URL: file://, http(s):// (read-only), memory://, s3:// or gs://
    (with s3fs/gcsfs; credentials from fsspec's usual configuration, e.g. FSSPEC_S3_ANON=true).
    """
    from intstream.store import open_store

    emit(open_store(upstream(store, "store"), require_complete=False).info())
