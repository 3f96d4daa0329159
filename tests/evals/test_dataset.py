"""Reading evaluation datasets: real JSONL and CSV files with good and bad lines, odd encodings and limits."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from thinktank.errors import InvalidRequestError
from thinktank.evals.check_types import ContainsCheck, JsonSchemaCheck, SimilarCheck
from thinktank.evals.dataset import (
    MAX_BYTES,
    MAX_ITEMS,
    MAX_LINE_BYTES,
    EvalItem,
    LineError,
    items_from_json,
    parse_dataset,
)
from thinktank.types import Message

JSONL = "\n".join([
    '{"id": "capital-fr", "question": "What is the capital of France?", "reference": "Paris", '
    '"tags": ["geography", "easy"], '
    '"checks": [{"type": "contains", "value": "Paris"}, {"type": "similar", "threshold": 0.6}]}',
    "",
    '{"question": "How many legs has a spider?", "expected": "8", "checks": [{"type": "numeric", "value": 8}]}',
    '{"question": "broken", "checks": [{"type": "regex", "pattern": "("}]}',
    "this is not JSON",
    '{"id": "capital-fr", "question": "a duplicate id"}',
    '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}], '
    '"tags": "math; easy"}',
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
    '{"question": "q", "messages": [{"role": "user", "content": "q"}]}',
    '{"reference": "no question at all"}',
    "[1, 2, 3]",
    '{"id": 7, "question": "An integer id", "notes": "ignored"}',
    "",
])


def write(tmp_path: Path, name: str, data: bytes | str) -> bytes:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    return path.read_bytes()


def errors_by_line(errors: list[LineError]) -> dict[int, str]:
    return {e.line: e.message for e in errors}


def test_jsonl_file_keeps_good_lines_and_reports_bad_ones_by_line(tmp_path: Path) -> None:
    parsed = parse_dataset(write(tmp_path, "qa.jsonl", JSONL), filename="qa.jsonl")

    assert [i.id for i in parsed.items] == ["capital-fr", "item-3", "item-7", "7"]
    first, spider, prime, seven = parsed.items
    assert first.question == "What is the capital of France?"
    assert first.reference == "Paris" and first.tags == ["geography", "easy"]
    assert first.checks == [ContainsCheck(value="Paris"), SimilarCheck(threshold=0.6)]
    assert spider.reference == "8"  # 'expected' is an alias of 'reference'
    assert [m.role for m in prime.messages] == ["system", "user"] and prime.question == "Name a prime."
    assert prime.tags == ["math", "easy"]
    assert seven.messages == [Message(role="user", content="An integer id")]

    errors = errors_by_line(parsed.errors)
    assert sorted(errors) == [4, 5, 6, 8, 9, 10, 11]  # line 2 is blank: skipped, yet counted
    assert "checks.0.pattern" in errors[4] and "invalid regular expression" in errors[4]
    assert errors[5].startswith("not valid JSON")
    assert errors[6] == "duplicate id 'capital-fr' (first on line 1)"
    assert "last message must be the user's" in errors[8]
    assert errors[9] == "give 'question' or 'messages', not both"
    assert errors[10] == "an item needs a 'question' (or 'messages')"
    assert errors[11] == "an item must be a JSON object, not a list"
    assert parsed.warnings == ["ignored unknown fields: 'notes' (line 12)"]
    assert parsed.tags() == ["easy", "geography", "math"]


CSV = (
    "id,question,reference,tags,checks,notes\r\n"
    "fr,What is the capital of France?,Paris,geography; easy,"
    "\"[{\"\"type\"\": \"\"contains\"\", \"\"value\"\": \"\"Paris\"\"}]\",x\r\n"
    "poem,\"Write a line\nabout the sea\",,poetry,,\r\n"
    "bad-checks,Q?,,,\"[{\"\"type\"\": \"\"nope\"\"}]\",\r\n"
    "\r\n"
    "bad-json,Q?,,,[not json,\r\n"
    "too-many,Q?,,,,,extra,cells\r\n"
    ",Default id?,42,\"a,b\",,\r\n"
    "fr,Same id again?,,,,\r\n"
)


def test_csv_file_reads_rows_with_their_line_numbers(tmp_path: Path) -> None:
    parsed = parse_dataset(write(tmp_path, "qa.csv", CSV), filename="qa.csv")

    assert [i.id for i in parsed.items] == ["fr", "poem", "item-9"]
    fr, poem, default = parsed.items
    assert fr.tags == ["geography", "easy"] and fr.checks == [ContainsCheck(value="Paris")]
    assert fr.reference == "Paris"
    assert poem.question == "Write a line\nabout the sea" and poem.reference is None
    assert default.reference == "42" and default.tags == ["a", "b"]

    errors = errors_by_line(parsed.errors)
    # The poem spans lines 3-4, so the next row starts on line 5; line 6 is blank.
    assert sorted(errors) == [5, 7, 8, 10]
    assert "Input tag 'nope'" in errors[5]
    assert errors[7].startswith("the 'checks' cell is not valid JSON")
    assert errors[8] == "the row has 8 cells and the header 6"
    assert errors[10] == "duplicate id 'fr' (first on line 2)"
    assert parsed.warnings == ["ignored CSV columns: 'notes'"]


def test_csv_row_with_too_many_cells_is_a_line_error(tmp_path: Path) -> None:
    text = "question,reference\nok?,yes\nwhat?,a,b\nfine?,\n"
    parsed = parse_dataset(write(tmp_path, "t.csv", text))
    assert [i.question for i in parsed.items] == ["ok?", "fine?"]
    assert parsed.errors == [LineError(3, "the row has 3 cells and the header 2")]


@pytest.mark.parametrize("delimiter", ["\t", ";"])
def test_csv_with_tabs_or_semicolons(tmp_path: Path, delimiter: str) -> None:
    text = delimiter.join(["Question", "Expected", "Tags"]) + "\n" + delimiter.join(["2+2?", "4", "math"]) + "\n"
    parsed = parse_dataset(write(tmp_path, "t.tsv", text), filename="t.tsv")
    assert parsed.items[0].question == "2+2?" and parsed.items[0].reference == "4"
    assert parsed.items[0].tags == ["math"]


def test_csv_messages_column_and_a_checks_cell_with_a_schema(tmp_path: Path) -> None:
    messages = json.dumps([{"role": "system", "content": "JSON only"}, {"role": "user", "content": "Give a point"}])
    checks = json.dumps([{"type": "json_schema", "schema": {"type": "object", "required": ["x"]}}])
    text = "messages,checks\n" + ",".join('"' + c.replace('"', '""') + '"' for c in (messages, checks)) + "\n"
    item = parse_dataset(write(tmp_path, "m.csv", text)).items[0]
    assert item.question == "Give a point"
    assert item.checks == [JsonSchemaCheck.model_validate({"type": "json_schema",
                                                           "schema": {"type": "object", "required": ["x"]}})]


def test_csv_without_a_question_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"needs a 'question' \(or 'messages'\) column; it has 'prompt'"):
        parse_dataset(write(tmp_path, "t.csv", "prompt,answer\nhi,there\n"))
    with pytest.raises(InvalidRequestError, match="names 'question' twice"):
        parse_dataset(write(tmp_path, "t.csv", "question,Question\nhi,there\n"))


def test_csv_cell_beyond_the_field_limit_is_a_line_error(tmp_path: Path) -> None:
    text = "id,question\nbig," + "x" * 200_000 + "\nsmall,ok?\n"
    parsed = parse_dataset(write(tmp_path, "big.csv", text))
    assert [i.id for i in parsed.items] == ["small"]
    assert len(parsed.errors) == 1 and parsed.errors[0].line == 2
    assert "field larger than field limit" in parsed.errors[0].message


def test_utf8_bom_is_accepted_in_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = write(tmp_path, "b.jsonl", b"\xef\xbb\xbf" + '{"question": "Caf\u00e9?"}\n'.encode())
    assert parse_dataset(jsonl).items[0].question == "Café?"
    csv_bytes = write(tmp_path, "b.csv", "question,reference\nCafé?,oui\n".encode("utf-8-sig"))
    assert parse_dataset(csv_bytes, filename="b.csv").items[0].reference == "oui"
    assert parse_dataset("\ufeff" + '{"question": "str with a BOM"}').items[0].question == "str with a BOM"


def test_latin1_bytes_are_refused_with_the_line(tmp_path: Path) -> None:
    data = write(tmp_path, "l.jsonl", '{"question": "ok"}\n{"question": "Caf\u00e9?"}\n'.encode("latin-1"))
    with pytest.raises(InvalidRequestError, match=r"not UTF-8 text: line 2, byte 18 \(0xe9\)") as caught:
        parse_dataset(data)
    assert caught.value.status == 400 and "Save it as UTF-8" in caught.value.message


@pytest.mark.parametrize(("encoding", "says"), [("utf-16", "UTF-16"), ("utf-32", "UTF-32"),
                                                ("utf-16-le", "NUL bytes")])
def test_utf16_and_utf32_are_refused(tmp_path: Path, encoding: str, says: str) -> None:
    data = write(tmp_path, "u.jsonl", '{"question": "What is 2+2?"}\n'.encode(encoding))
    with pytest.raises(InvalidRequestError, match=says):
        parse_dataset(data, filename="u.jsonl")


def test_lone_surrogates(tmp_path: Path) -> None:
    # As the bytes of one (ED A0 80): not UTF-8.
    raw = write(tmp_path, "s.jsonl", b'{"question": "ok"}\n{"question": "\xed\xa0\x80"}\n')
    with pytest.raises(InvalidRequestError, match="line 2"):
        parse_dataset(raw)
    # In a str handed over: the whole text cannot be stored.
    with pytest.raises(InvalidRequestError, match="line 2 holds a lone surrogate"):
        parse_dataset('{"question": "ok"}\n{"question": "\ud800"}\n')
    # As a JSON escape on one line: that line is refused, the rest goes on.
    parsed = parse_dataset('{"question": "ok"}\n{"question": "\\ud800"}\n{"question": "fine"}\n')
    assert [i.question for i in parsed.items] == ["ok", "fine"]
    assert parsed.errors[0].line == 2 and "surrogate" in parsed.errors[0].message
    # In objects from a request body.
    parsed = items_from_json([{"question": "ok"}, {"question": "bad \udc00"}])
    assert parsed.errors == [LineError(2, "the item holds text that is not valid Unicode (a lone surrogate)")]


def test_huge_numbers_are_line_errors(tmp_path: Path) -> None:
    text = "\n".join([
        '{"id": ' + "9" * 400 + ', "question": "huge id"}',
        '{"question": "huge value", "checks": [{"type": "numeric", "value": 1e400}]}',
        '{"question": "huge min", "checks": [{"type": "citations", "min": 18446744073709551615}]}',
        '{"question": "huge cost", "checks": [{"type": "cost", "max_usd": 1e200}]}',
        '{"question": "fine", "checks": [{"type": "numeric", "value": 123456789012345678}]}',
        '{"id": 1180591620717411303424, "question": "a 70-bit id"}',
    ])
    parsed = parse_dataset(write(tmp_path, "n.jsonl", text))
    assert [i.question for i in parsed.items] == ["fine"]
    errors = errors_by_line(parsed.errors)
    assert sorted(errors) == [1, 2, 3, 4, 6]
    assert errors[1] == "not valid JSON: number is infinity when parsed as double (column 8)"
    assert "infinity" in errors[2]
    assert errors[6] == "'id' must be a string"  # read as a float: beyond 64 bits
    assert errors[3].startswith("checks.0.min: Input should be less than or equal to")
    assert errors[4].startswith("checks.0.max_usd: Input should be less than or equal to")
    # Python ints of any size, as a JSON body parsed by the standard library gives them.
    parsed = items_from_json([{"id": 10**5000, "question": "a"}, {"question": "b", "reference": 10**5000},
                              {"question": "c", "checks": [{"type": "numeric", "value": float("nan")}]},
                              {"question": "d"}])
    assert [i.question for i in parsed.items] == ["d"]
    assert [e.line for e in parsed.errors] == [1, 2, 3]
    assert parsed.errors[0].message == parsed.errors[1].message == (
        "the item holds an integer too large (beyond 64 bits)")
    assert parsed.errors[2].message.startswith("checks.0.value: Input should be a finite number")


def test_wrong_types_are_line_errors() -> None:
    parsed = items_from_json([
        {"question": 5},
        {"question": "   "},
        {"messages": "hello"},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": []},
        {"question": "q", "tags": [1, 2]},
        {"question": "q", "tags": ["x" * 65]},
        {"question": "q", "checks": {"type": "contains"}},
        {"question": "q", "checks": [{"type": "contains", "value": "x", "case_sensitive": "yes"}]},
        {"question": "q", "checks": [{"type": "contains", "value": "x", "extra": 1}]},
        {"id": True, "question": "q"},
        {"id": "", "question": "q"},
        {"id": "two\nlines", "question": "q"},
        {"question": "q", "reference": "a", "expected": "b"},
        "just a string",
        {"question": "the only good one", "reference": "a", "expected": "a"},
    ])
    assert [i.question for i in parsed.items] == ["the only good one"]
    errors = errors_by_line(parsed.errors)
    assert sorted(errors) == list(range(1, 16))
    assert errors[1] == "'question' must be a non-empty string"
    assert errors[3] == "'messages' must be a list of chat messages"
    assert errors[4].startswith("messages.0.role: Input should be")
    assert errors[5].startswith("messages: List should have at least 1 item")
    assert errors[6] == "'tags' must be a list of strings"
    assert errors[7].startswith("tags.0: String should have at most 64 characters")
    assert errors[8] == "'checks' must be a list of checks"
    assert errors[9] == "checks.0.case_sensitive: Input should be a valid boolean"
    assert errors[10] == "checks.0.extra: Extra inputs are not permitted"
    assert errors[11] == "'id' must be a string"
    assert errors[12].startswith("id: String should have at least 1 character")
    assert "printable" in errors[13]
    assert errors[14] == "give 'reference' or its alias 'expected', not both"
    assert errors[15] == "an item must be a JSON object, not a string"


def test_a_long_line_is_a_line_error_and_the_rest_goes_on(tmp_path: Path) -> None:
    long_line = orjson.dumps({"question": "x" * (MAX_LINE_BYTES + 10)}).decode()
    parsed = parse_dataset(write(tmp_path, "l.jsonl", f'{{"question": "a"}}\n{long_line}\n{{"question": "b"}}\n'))
    assert [i.question for i in parsed.items] == ["a", "b"]
    assert parsed.errors == [LineError(2, "the line is longer than 256 KB")]


def test_limits_on_items_and_size(tmp_path: Path) -> None:
    many = "".join(f'{{"question": "q{i}"}}\n' for i in range(MAX_ITEMS))
    assert len(parse_dataset(write(tmp_path, "ok.jsonl", many)).items) == MAX_ITEMS
    with pytest.raises(InvalidRequestError, match="more than 2,000 items"):
        parse_dataset(write(tmp_path, "many.jsonl", many + '{"question": "one too many"}\n'))
    rows = "question\n" + "".join(f"q{i}\n" for i in range(MAX_ITEMS + 1))
    with pytest.raises(InvalidRequestError, match="more than 2,000 items"):
        parse_dataset(write(tmp_path, "many.csv", rows))
    with pytest.raises(InvalidRequestError, match="more than 2,000 items"):
        items_from_json([{"question": "q"}] * (MAX_ITEMS + 1))
    big = b'{"question": "' + b"x" * (200 * 1024) + b'"}\n'
    with pytest.raises(InvalidRequestError, match="larger than 10 MB") as caught:
        parse_dataset(write(tmp_path, "big.jsonl", big * (MAX_BYTES // len(big) + 1)))
    assert caught.value.code == "dataset_too_large"


def test_no_valid_item_names_the_first_line_errors(tmp_path: Path) -> None:
    text = '\n{"nope": 1}\nnot json\n{"question": ""}\n[]\n'
    with pytest.raises(InvalidRequestError) as caught:
        parse_dataset(write(tmp_path, "bad.jsonl", text))
    message = caught.value.message
    assert message.startswith("No valid item in the dataset: line 2: an item needs a 'question'")
    assert "line 3: not valid JSON" in message and "line 4:" in message and "(and 1 more)" in message
    with pytest.raises(InvalidRequestError, match="empty"):
        parse_dataset(b"  \n\n")
    with pytest.raises(InvalidRequestError, match="no items"):
        parse_dataset("question\n\n")


def test_format_from_the_argument_the_name_or_the_content(tmp_path: Path) -> None:
    assert parse_dataset("question\nWhy?\n", format="csv").items[0].question == "Why?"
    assert parse_dataset("question\nWhy?\n").items[0].question == "Why?"  # sniffed: not JSON
    assert parse_dataset('{"question": "Why?"}', filename="x.txt").items[0].question == "Why?"
    array = json.dumps([{"id": "a", "question": "A?"}, {"question": 1}])
    parsed = parse_dataset(write(tmp_path, "list.json", array), filename="list.json")
    assert [i.id for i in parsed.items] == ["a"] and parsed.errors[0].line == 2
    with pytest.raises(InvalidRequestError, match="Unknown dataset format 'xml'"):
        parse_dataset("question\nWhy?\n", format="xml")  # type: ignore[arg-type]


def test_item_key_question_and_json_round_trip() -> None:
    parsed = parse_dataset(JSONL)
    again = items_from_json([item.to_json() for item in parsed.items])
    assert again.items == parsed.items and again.errors == []
    for item in parsed.items:  # as a store keeps them
        assert EvalItem.model_validate_json(item.model_dump_json()) == item
    schema_item = items_from_json([{"question": "q", "checks": [
        {"type": "not", "check": {"type": "json_schema", "schema": {"type": "array"}}}]}]).items[0]
    assert schema_item.model_dump(mode="json")["checks"][0]["check"]["schema"] == {"type": "array"}
    assert EvalItem.model_validate_json(schema_item.model_dump_json()) == schema_item
    first = parsed.items[0]
    assert first.key() == EvalItem(id="other", messages=first.messages).key()  # the id is not part of it
    assert first.key() != parsed.items[1].key()
    assert len(first.key()) == 64
    assert parsed.items[2].to_json()["messages"][0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(ValidationError):
        EvalItem(id="x", messages=[Message(role="user", content="q")], tags=["ok"],
                 checks=[{"type": "not", "check": {"type": "nope"}}])
