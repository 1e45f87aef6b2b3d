"""The spool of BATCH files: files of at most batch_size rows, and settles that wait for
the files holding their rows to be announced."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from singer_sdk.helpers._batch import BatchConfig

from tap_gtmcli.tap.batch_files import BatchConfigError, BatchSpool, check_encoding, spool_for


class Recorder:
    """A storage in memory, and the order in which the spool did things."""

    def __init__(self, batch_size: int, compress: bool = True) -> None:
        self.files: dict[str, bytes] = {}
        self.events: list[tuple[str, ...]] = []
        self.spool = BatchSpool(
            batch_size=batch_size, open_file=self.open_file, file_url=lambda n: f"mem://{n}",
            announce=lambda stream, url: self.events.append(("BATCH", stream, url)),
            write_state=lambda: self.events.append(("STATE",)),
            compress=compress, file_prefix="tap--", run_id="run",
        )

    @contextmanager
    def open_file(self, name: str) -> Iterator[io.BytesIO]:
        buffer = io.BytesIO()
        yield buffer
        self.files[name] = buffer.getvalue()

    def lines(self, url: str) -> list[bytes]:
        data = self.files[url.removeprefix("mem://")]
        return (gzip.decompress(data) if url.endswith(".gz") else data).splitlines()

    def settle(self, job: str) -> None:
        self.events.append(("SETTLE", job))


def page(first: int, count: int) -> bytes:
    return b"".join(b'{"n":%d}\n' % n for n in range(first, first + count))


def test_files_hold_at_most_batch_size_rows_split_between_lines_in_order():
    recorder = Recorder(batch_size=250)
    for first in range(1, 1001, 300):  # pages of 300 rows, the last one of 100
        count = min(300, 1001 - first)
        recorder.spool.add_lines("job_results", page(first, count), count)
    recorder.spool.flush()
    urls = [event[2] for event in recorder.events if event[0] == "BATCH"]
    assert urls == [f"mem://tap--job_results-run-{n:05d}.jsonl.gz" for n in range(1, 5)]
    contents = [recorder.lines(url) for url in urls]
    assert [len(lines) for lines in contents] == [250, 250, 250, 250]
    assert [line for lines in contents for line in lines] == page(1, 1000).splitlines()
    assert recorder.events[-1] == ("STATE",)


def test_a_settle_waits_until_every_open_file_is_announced():
    recorder = Recorder(batch_size=100)
    spool = recorder.spool
    spool.add_lines("job_results", page(1, 30), 30)
    spool.add_rows("jobs", [{"id": "job_1"}])
    spool.job_done(lambda: recorder.settle("job_1"))
    # 31 rows since the last STATE: below batch_size, nothing announced, nothing settled.
    assert recorder.events == []
    spool.add_lines("job_results", page(31, 80), 80)  # fills and announces the first file
    assert recorder.events == [("BATCH", "job_results", "mem://tap--job_results-run-00001.jsonl.gz")]
    spool.add_rows("jobs", [{"id": "job_2"}])
    spool.job_done(lambda: recorder.settle("job_2"))  # 112 rows: flush at this boundary
    assert recorder.events[1:] == [
        ("BATCH", "jobs", "mem://tap--jobs-run-00002.jsonl.gz"),
        ("BATCH", "job_results", "mem://tap--job_results-run-00003.jsonl.gz"),
        ("SETTLE", "job_1"), ("SETTLE", "job_2"), ("STATE",),
    ]
    assert recorder.lines("mem://tap--jobs-run-00002.jsonl.gz") == [
        b'{"id":"job_1"}', b'{"id":"job_2"}']
    assert len(recorder.lines("mem://tap--job_results-run-00003.jsonl.gz")) == 10


def test_the_final_flush_settles_jobs_without_rows_and_writes_a_state():
    recorder = Recorder(batch_size=100, compress=False)
    recorder.spool.add_rows("jobs", [{"id": "job_failed", "status": "failed"}])
    recorder.spool.job_done(lambda: recorder.settle("job_failed"))
    recorder.spool.flush()
    assert recorder.events == [
        ("BATCH", "jobs", "mem://tap--jobs-run-00001.jsonl"),
        ("SETTLE", "job_failed"), ("STATE",),
    ]
    assert recorder.lines("mem://tap--jobs-run-00001.jsonl") == [
        b'{"id":"job_failed","status":"failed"}']


def test_a_batch_size_below_one_is_refused_naming_the_setting():
    with pytest.raises(BatchConfigError, match=r"batch_config\.batch_size must be 1 or more"):
        Recorder(batch_size=0)


@pytest.mark.parametrize(
    ("file_format", "compression", "message"),
    [("parquet", "gzip", r"batch_config\.encoding\.format 'parquet' is not supported"),
     ("jsonl", "zstd", r"batch_config\.encoding\.compression 'zstd' is not supported")],
)
def test_encodings_the_tap_cannot_write_are_refused_naming_the_field(
    file_format, compression, message
):
    with pytest.raises(BatchConfigError, match=message):
        check_encoding(file_format, compression)


@pytest.mark.parametrize("compression", [None, "none", "gzip"])
def test_jsonl_with_or_without_gzip_is_accepted(compression, tmp_path):
    """The encoding is accepted, and the files are written as it says: gzip, or plain."""
    assert check_encoding("jsonl", compression) is None
    encoding = {"format": "jsonl", **({} if compression is None else {"compression": compression})}
    config = BatchConfig.from_dict({"encoding": encoding, "storage": {"root": tmp_path.as_uri()},
                                    "batch_size": 2})
    announced: list[tuple[str, str]] = []
    spool = spool_for(config, file_prefix="tap--", write_state=lambda: None,
                      announce=lambda stream, url: announced.append((stream, url)))
    spool.add_rows("jobs", [{"id": "job_1"}, {"id": "job_2"}, {"id": "job_3"}])
    spool.flush()
    assert [stream for stream, _ in announced] == ["jobs", "jobs"]
    files = [Path(url.removeprefix("file://")) for _, url in announced]
    raw = b"".join(path.read_bytes() for path in files)
    if compression == "gzip":
        assert all(path.name.endswith(".jsonl.gz") for path in files)
        text = b"".join(gzip.decompress(path.read_bytes()) for path in files)
    else:
        assert all(path.name.endswith(".jsonl") for path in files)
        assert not raw.startswith(b"\x1f\x8b")  # no gzip magic
        text = raw
    assert text.splitlines() == [b'{"id":"job_1"}', b'{"id":"job_2"}', b'{"id":"job_3"}']
