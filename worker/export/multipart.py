"""A write-only, unseekable file object that streams into one S3 object.

Bytes are buffered up to one part and uploaded as they come, so memory stays at about one part
whatever the object's size. An object smaller than one part is sent with a single PutObject. The
sink hashes what it writes, so the caller learns the object's SHA-256 and size without reading it
back.
"""

from __future__ import annotations

import hashlib
import io
from types import TracebackType
from typing import Any

from worker.core.s3errors import s3_error


class MultipartSink(io.RawIOBase):
    def __init__(self, client: Any, bucket: str, key: str, *, part_size: int, extra_args: dict[str, str]) -> None:
        super().__init__()
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._extra = extra_args
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self._sha256 = hashlib.sha256()
        self._size = 0
        self.version_id: str | None = None
        self._done = False

    # -- file protocol (what zipfile and copy loops use) --------------------------------------
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("an S3 multipart upload cannot seek")

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._sha256.update(view)
        self._buffer += view
        self._size += len(view)
        while len(self._buffer) >= self._part_size:
            chunk = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            self._upload_part(chunk)
        return len(view)

    # -- results -------------------------------------------------------------------------------
    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def size(self) -> int:
        return self._size

    def complete(self) -> None:
        """Makes the object visible. Before this, nothing of it is readable from the bucket."""
        try:
            if self._upload_id is None:
                response = self._client.put_object(
                    Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer), **self._extra
                )
            else:
                if self._buffer:
                    self._upload_part(bytes(self._buffer))
                response = self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except Exception as exc:
            self.abort()
            raise s3_error(exc, "completing an export object") from None
        self._buffer = bytearray()
        self.version_id = response.get("VersionId")
        self._done = True
        super().close()

    def abort(self) -> None:
        """Drops uploaded parts so they neither cost nor linger. Safe to call twice."""
        upload_id, self._upload_id = self._upload_id, None
        self._buffer = bytearray()
        if upload_id is not None:
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)
            except Exception:  # noqa: S110 - best effort; a lifecycle rule sweeps leftovers
                pass
        super().close()

    def close(self) -> None:
        """Closing without ``complete`` abandons the object: a half-written package is never visible."""
        if not self._done:
            self.abort()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _upload_part(self, chunk: bytes) -> None:
        try:
            if self._upload_id is None:
                created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key, **self._extra)
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            response = self._client.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk
            )
        except Exception as exc:
            self.abort()
            raise s3_error(exc, "uploading an export part") from None
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
