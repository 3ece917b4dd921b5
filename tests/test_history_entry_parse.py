"""verify_chain's "valid JSON" check (orchestrator/history.py, _parse) runs json.loads's own scanner without
json.loads's wrapping, for speed: it must accept and refuse exactly what json.loads does, with the same value."""

from __future__ import annotations

import json

import pytest

from airgap_orch.orchestrator import history

TEXTS = [
    '{"seq":1,"job_id":"j-1"}',
    ' {"seq":1,"job_id":"j-1"}', '{"seq":1,"job_id":"j-1"} ', '\n{"seq":1}\t', '\ufeff{"seq":1}',
    '{"seq":1}{"seq":2}', '{"seq":1} x', '{"seq":1,}', '{"seq":1', '', ' ', 'null', 'true', '1', '"text"', '[]',
    '{"seq":NaN}', '{"seq":Infinity,"x":-Infinity}', '{"seq":1,"seq":2}', '{"a":"\\ud800"}', '{"a":"\\x"}',
    '{"a":"line\nbreak"}', '{"a":' + "9" * 400 + "}", '{"a":1e400}', "[" * 50 + "]" * 50, "[" * 50,
    '{"a":"é€😀"}', "{'seq':1}", '{"seq":01}', '{"seq":-0}',
]


def loads_verdict(text):
    try:
        return ("value", json.loads(text))
    except json.JSONDecodeError:
        return ("value", None)
    except Exception as error:  # noqa: BLE001 (the kind of any other refusal must match too)
        return ("raises", type(error))


def parse_verdict(text):
    try:
        return ("value", history._parse(text))
    except Exception as error:  # noqa: BLE001
        return ("raises", type(error))


@pytest.mark.parametrize("text", [*TEXTS, b'{"seq":1}', 7, None])
def test_the_chain_checks_parse_gives_exactly_json_loads_verdict_and_value(text):
    assert repr(parse_verdict(text)) == repr(loads_verdict(text))  # repr: NaN equals itself there


def chained(*texts: str) -> list[tuple[int, str, str, str]]:
    rows, prev = [], history.GENESIS
    for seq, text in enumerate(texts, 1):
        prev = history.chain(prev, text)
        rows.append((seq, "j-1", text, prev))
    return rows


def test_an_entry_json_loads_accepts_with_whitespace_around_it_verifies_and_one_with_extra_data_does_not():
    padded = chained('{"seq":1,"job_id":"j-1"}', ' {"seq":2,"job_id":"j-1"}\n')
    assert history.verify_chain(padded).entries == 2
    extra = chained('{"seq":1,"job_id":"j-1"}', '{"seq":2,"job_id":"j-1"} {}')
    with pytest.raises(history.Broken, match="entry 2: not valid JSON"):
        history.verify_chain(extra)
