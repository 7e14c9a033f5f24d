"""Point tables as planners bring them: CSV in the CRM's text encoding, or Parquet.

Chinese CRMs export CSV in GBK/GB18030 as often as in UTF-8, so the encoding is a parameter
and a decode error says where in the file it happened and which encodings to try.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from territory.errors import InvalidInputError

#: What a CSV is read as unless the caller says otherwise.
DEFAULT_ENCODING = "utf-8"
#: Bytes of CSV Arrow parses per block when it reads a whole file (blocks are parsed in
#: parallel).
_CSV_BLOCK_BYTES = 8 << 20
#: The same when a file is streamed chunk by chunk: Arrow's streaming reader reads up to 32
#: blocks ahead of its consumer on a thread of its own, so its memory is 32 blocks, whatever
#: the file's size (8 MB blocks: 290 MB ahead; 1 MB: 39 MB, and no more CPU).
STREAM_BLOCK_BYTES = 1 << 20
#: Rows per chunk when a table is streamed through the assignment: a few chunks are in memory
#: at once (one read ahead, one assigned, one written), the assignment's temporaries about
#: 100 bytes a row. With 500 000 the peak memory was 15 % higher at 50 M rows than at 2 M
#: (the three stages' peaks meet more often over more chunks); 250 000 keeps it within 6 %,
#: at the same CPU.
CHUNK_ROWS = 250_000


def codec(encoding: str) -> str:
    """The Python codec to read ``encoding`` with; UTF-8 tolerates a byte-order mark.

    Raises InvalidInputError for a name Python does not know, before any file is opened.
    """
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise InvalidInputError(
            f"`encoding` {encoding!r} is not a known text encoding; use e.g. 'utf-8', "
            "'gbk' or 'gb18030'"
        ) from None
    return "utf-8-sig" if name == "utf-8" else name


def decode_error(path: Path, encoding: str, what: str) -> InvalidInputError:
    """The error for ``path`` not being text in ``encoding``: the line and byte of the first
    undecodable bytes, and the fix.

    Lines are decoded one by one: in UTF-8, GBK and GB18030 a newline byte is never part of
    a multi-byte character, so a line boundary never splits one.
    """
    decoder = codec(encoding)
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode(decoder if number == 1 else decoder.removesuffix("-sig"))
            except UnicodeDecodeError as exc:
                bad = line[exc.start:exc.end + 3].hex(" ")
                return InvalidInputError(
                    f"{what}: {path} is not {encoding} text: line {number} (byte "
                    f"{offset + exc.start}) holds bytes {bad} that {encoding} cannot decode; "
                    "set `encoding` to the file's encoding (Chinese CRM exports are often "
                    "'gb18030' or 'gbk')"
                )
            offset += len(line)
    return InvalidInputError(f"{what}: {path} is not {encoding} text; set `encoding`")


def csv_options(path: Path, encoding: str, block_size: int = _CSV_BLOCK_BYTES
                ) -> tuple[pacsv.ReadOptions, pacsv.ConvertOptions]:
    """Arrow's CSV options that read ``path`` in ``encoding`` keeping every cell as the text
    it is ("001" stays "001", a blank stays blank): every column is read as a string, which
    needs the header's names, read by a first pass over the first block. Arrow parses the
    blocks (``block_size`` bytes each) on several threads."""
    name = codec(encoding)
    read = pacsv.ReadOptions(encoding="utf8" if name == "utf-8-sig" else name,
                             block_size=block_size)
    with pacsv.open_csv(path, read_options=read) as probe:
        names = probe.schema.names
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    return read, convert


def read_point_table(path: str | Path, *, encoding: str = DEFAULT_ENCODING,
                     name: str = "points") -> pd.DataFrame:
    """Read a CSV (in ``encoding``) or Parquet table; refuse a missing, unreadable or empty
    one with a message naming the file."""
    path = Path(path)
    decoder = codec(encoding)
    if not path.exists():
        raise InvalidInputError(f"{name}: {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            df = pd.read_csv(path, encoding=decoder)
        else:
            raise InvalidInputError(f"{name}: {path} must be .csv or .parquet")
    except UnicodeDecodeError:
        raise decode_error(path, encoding, name) from None
    except pd.errors.EmptyDataError:
        raise InvalidInputError(f"{name}: {path} is empty; export the table again") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{name}: cannot read {path} ({exc})") from None
    if len(df) == 0:
        raise InvalidInputError(
            f"{name}: {path} is empty (a header and no rows); export the table again"
        )
    return df
