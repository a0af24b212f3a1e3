"""The JSON Lines file layer: what is written reads back unchanged, one record per line for
any line reader; bad lines are named. (Atomic replacement, modes, symlinks and killed writes
are tested through ``Preferences.to_jsonl`` in test_preferences.py.)"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyrlhf import jsonl

# JSON values with any text, including U+2028, U+2029, U+0085, "\r" and "\n" inside strings
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=50)
@given(st.lists(values, max_size=5))
def test_written_records_read_back_one_per_line(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("jsonl") / "data.jsonl"
    jsonl.write_jsonl(path, records)
    text = path.read_text(encoding="utf-8")
    # any line reader sees one record per line: str.splitlines splits on U+2028 etc. too
    assert len(text.splitlines()) == len(records)
    assert [json.loads(line) for line in text.splitlines()] == records
    assert [value for _, value in jsonl.read_jsonl(path)] == records


def test_reading_skips_blank_lines_and_a_byte_order_mark_and_names_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n \t\r\n[2]\r\n')
    assert list(jsonl.read_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:3", [2])]
    path.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"data.jsonl:2: bad JSON"):
        list(jsonl.read_jsonl(path))
    path.write_bytes(b'{"a": 1}\n\n"\xff"\n')
    with pytest.raises(
        ValueError, match=r"data.jsonl:3: not UTF-8 text \(byte 0xff at column 2\)"
    ):
        list(jsonl.read_jsonl(path))
    with pytest.raises(TypeError, match="path must be a file name"):
        jsonl.read_jsonl(3).__next__()
