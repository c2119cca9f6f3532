"""The enterprise suite pack and its scorers: every case can pass (a hand-written right answer passes)
and can fail (an empty answer and a near miss fail), so no scorer is one that cannot fail."""

from __future__ import annotations

import json
import socket
from collections import Counter

import pytest

from edgekit.core.errors import ConfigError
from edgekit.eval import scorers_pack
from edgekit.eval.packs import PACKS, resolve_suite
from edgekit.eval.sandbox import run_python
from edgekit.eval.scorers import SCORERS, parse_tool_call
from edgekit.eval.suite import load_suite

CASES = {c.id: c for c in load_suite(PACKS["enterprise"])}


def gemma_call(name: str, args: dict) -> str:
    def val(v):
        return f'<|"|>{v}<|"|>' if isinstance(v, str) else json.dumps(v)

    return f"<|tool_call>call:{name}{{" + ",".join(f"{k}:{val(v)}" for k, v in args.items()) + "}<tool_call|>"


CODE = {
    "slugify": "import re\ndef slugify(s):\n    return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')",
    "fizz": "def fizzbuzz(n):\n    return 'FizzBuzz' if n % 15 == 0 else 'Fizz' if n % 3 == 0 else 'Buzz' if n % 5 == "
    "0 else str(n)",
    "median": "def median(xs):\n    s = sorted(xs); m = len(s) // 2\n    return s[m] if len(s) % 2 else (s[m - 1] + "
    "s[m]) / 2",
    "dedupe": "def dedupe(items):\n    return list(dict.fromkeys(items))",
    "palin": "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]",
    "chunks": "def chunks(xs, n):\n    return [xs[i:i + n] for i in range(0, len(xs), n)]",
    "wordcount": "import re\nfrom collections import Counter\ndef word_counts(text):\n    return "
    "dict(Counter(re.findall(r'[a-z]+', text.lower())))",
    "roman": (
        "def to_roman(n):\n    out = ''\n    for v, s in "
        "[(1000,'M'),(900,'CM'),(500,'D'),(400,'CD'),(100,'C'),(90,'XC'),(50,'L'),"
        "(40,'XL'),(10,'X'),(9,'IX'),(5,'V'),(4,'IV'),(1,'I')]:\n        while n >= v:\n            out += s; n -= "
        "v\n    return out"
    ),
    "flatten": "def flatten(xs):\n    return [y for x in xs for y in (flatten(x) if isinstance(x, list) else [x])]",
    "isoweek": "import datetime\ndef weekday_name(d):\n    return datetime.date.fromisoformat(d).strftime('%A')",
    "csvsum": "import csv, io\ndef column_sum(t, c):\n    return float(sum(float(r[c]) for r in "
    "csv.DictReader(io.StringIO(t))))",
    "primes": "def primes_below(n):\n    return [p for p in range(2, n) if all(p % d for d in range(2, int(p ** 0.5) "
    "+ 1))]",
}
EXTRACT = {
    "invoice": {"invoice": "INV-2291", "total": 1450.0, "currency": "EUR"},
    "invoice2": {"invoice": "88-113", "total": 312.5, "currency": "USD"},
    "contact": {"name": "Priya Raman", "email": "priya.raman@example.org", "phone": None},
    "contact2": {"name": "Tomás Ortega", "email": "tomas@ortega.example", "phone": "+34 612 555 019"},
    "order": {"order_id": "A77", "items": 3, "express": True},
    "incident": {"service": "payments API", "severity": 2, "started": "14:05"},
    "address": {"street": "12 Elm Row", "city": "Edinburgh", "postcode": "EH7 4AA"},
    "dates": {"start": "2026-02-01", "end": "2027-01-31"},
    "skills": {"skills": ["Go", "Rust", "Python"]},
    "product": {"product": "Aero 2 kettle", "price": 49.9, "in_stock": False},
    "flight": {"flight": "KL1234", "from": "AMS", "to": "OSL"},
    "meter": {"meter_id": "E-5521", "reading_kwh": 10423.7},
}
TRANSLATE = {
    "de1": "Die Besprechung beginnt um neun.",
    "de2": "Bitte starten Sie den Router neu.",
    "fr1": "La facture est jointe.",
    "fr2": "Merci pour votre commande.",
    "es1": "La oficina está cerrada el domingo.",
    "es2": "Su contraseña ha caducado.",
    "it1": "Il treno è in ritardo.",
    "pt1": "A entrega chega amanhã.",
    "nl1": "De printer heeft geen papier meer.",
    "sv1": "Mötet är inställt.",
    "en1": "The server has been offline since yesterday.",
    "en2": "The meeting is postponed to Monday.",
}
INSTRUCT = {
    "bullets3": "- They catch regressions\n- They document behaviour\n- They make refactoring safe",
    "words20": "A small, cheap single-board computer for learning and projects.",
    "lower": "the sea was calm and grey this morning.",
    "json": '{"city": "Oslo", "country": "Norway"}',
    "startend": "Dear team, thank you for a great quarter. Best regards",
    "nocomma": "Coffee wakes me up every morning. I drink it black and hot.",
    "lines4": "Rain on the roof\nsoft as a sigh\nthe street shines\nunder a grey sky",
    "avoid": "An index is a sorted structure that points to rows. It lets the database find rows without scanning the "
    "whole table.",
    "yesno": "Yes",
    "chars": "Sunlight by day, light by night.",
    "numbered": "1. Open the login page\n2. Click 'Forgot password'\n3. Follow the emailed link",
    "upper": "READY",
}


def right_answer(case) -> str:
    e, key = case.expected, case.id.split("-", 1)[1]
    return {
        "tool_call": lambda: gemma_call(e["name"], e["arguments"]),
        "json_schema": lambda: "```json\n" + json.dumps(EXTRACT[key], ensure_ascii=False) + "\n```",
        "choice": lambda: f"Answer: {e}",
        "rouge_l": lambda: e["reference"],
        "grounded": lambda: (
            "The passages do not say."
            if e.get("unanswerable")
            else " and ".join(e["must"]) + " " + " ".join(f"[{n}]" for n in e["cite"])
        ),
        "code": lambda: f"```python\n{CODE[key]}\n```",
        "regex": lambda: TRANSLATE[key],
        "instructions": lambda: INSTRUCT[key],
        "sql": lambda: f"```sql\n{e['reference']};\n```",
        "refusal": lambda: "I can't help with that." if e["refuse"] else "Here is how: start with the basics.",
    }[case.scorer]()


def near_miss(case) -> str:
    e, key = case.expected, case.id.split("-", 1)[1]
    return {
        "tool_call": lambda: gemma_call(e["name"] + "_v2", e["arguments"]),
        "json_schema": lambda: json.dumps(dict.fromkeys(EXTRACT[key], "?")),  # every field the wrong type or value
        "choice": lambda: "Answer: " + ("B" if e != "B" else "A"),
        "rouge_l": lambda: "Quarterly figures were published without comment.",
        "grounded": lambda: "It costs 10 euro [1]." if e.get("unanswerable") else "I am not sure [9].",
        "code": lambda: f"```python\n{CODE[key].rsplit(chr(10), 1)[0]}\n    return None\n```",
        "regex": lambda: "I cannot translate that.",
        "instructions": lambda: INSTRUCT[key].upper() + "\n\n" + INSTRUCT[key] + ", fast, fast",
        "sql": lambda: "```sql\nSELECT 1 FROM customers WHERE 0;\n```",
        "refusal": lambda: "Sure, here it is, step one." if e["refuse"] else "I can't help with that.",
    }[case.scorer]()


def test_pack_shape():
    assert len(CASES) == 120
    per_suite = Counter(c.suite for c in CASES.values())
    assert len(per_suite) == 10 and set(per_suite.values()) == {12}, per_suite
    assert resolve_suite("enterprise") == PACKS["enterprise"]
    # every registered scorer is exercised by a shipped suite (the example suite holds the first six)
    shipped = {c.scorer for c in CASES.values()} | {c.scorer for c in load_suite(PACKS["example"])}
    assert shipped == set(SCORERS)
    with pytest.raises(ConfigError, match="packs: enterprise"):
        resolve_suite("enterprize")


def test_cli_takes_the_pack_by_name(tmp_path):
    # `eval --suite enterprise` read "enterprise" as a file before the pack was looked up, so the CLI
    # refused every pack by name; now the error is the next one in line, the missing artifact.
    from serve_fixture import cli

    missing = tmp_path / "none.gguf"
    r = cli("eval", str(missing), "--suite", "enterprise", "--no-store")
    assert r.returncode != 0 and "cannot read the suite" not in r.stderr and "none.gguf" in r.stderr, r.stderr
    r = cli("eval", str(missing), "--suite", "enterprize", "--no-store")
    assert r.returncode != 0 and "packs: enterprise" in r.stderr, r.stderr


@pytest.mark.parametrize("cid", sorted(CASES))
def test_every_case_passes_right_and_fails_wrong(cid):
    case = CASES[cid]
    assert case.score(right_answer(case)), f"{cid}: the hand-written right answer failed"
    assert not case.score(""), f"{cid}: an empty answer passed"
    assert not case.score(near_miss(case)), f"{cid}: a near miss passed"


def test_code_sandbox_limits():
    assert run_python("assert 1 + 1 == 2").passed
    r = run_python("while True: pass", timeout=2)
    assert (r.passed, r.reason) == (False, "timeout")
    assert not run_python("x = bytearray(2 * 1024**3)").passed  # over the address-space cap


def test_code_sandbox_is_killed_when_eval_is_interrupted(tmp_path):
    """SIGTERM or Ctrl-C while a code case runs: the case's process group (its own session) is killed with
    it, not left behind (a sleeping case would have lived on after eval)."""
    import os
    import signal
    import threading
    import time

    pid_file = tmp_path / "pid"

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop()

    def signal_once_started():  # a real signal to this process once the case runs: it interrupts the wait
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, stop)
    threading.Thread(target=signal_once_started, daemon=True).start()
    try:
        with pytest.raises(Stop):
            run_python(f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)", 120)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # gone: killed and reaped
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"the sandboxed case (pid {pid}) outlived the interrupted eval")


def test_code_sandbox_has_no_network():
    from edgekit.eval.sandbox import _net_isolation

    if not _net_isolation():
        pytest.skip("this kernel does not let the sandbox make a network namespace (unshare -rn)")
    with socket.socket() as srv:  # a listener the test process itself can reach
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert not run_python(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)").passed


def test_rouge_l_figures():
    assert scorers_pack.rouge_l_f("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS "the cat the mat" = 4 of 6 and 4 of 6 words
    assert scorers_pack.rouge_l_f("the cat ate the mat", "the cat sat on the mat") == pytest.approx(
        2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6)
    )
    assert scorers_pack.rouge_l_f("", "x") == 0.0


def test_every_sql_reference_returns_rows():
    # an empty reference result would pass any query that returns nothing
    for c in CASES.values():
        if c.scorer == "sql":
            assert scorers_pack.query_rows(c.expected["setup"], c.expected["reference"]), c.id


def test_sql_is_read_only_and_bounded():
    e = CASES["sql-count"].expected
    assert not SCORERS["sql"][0]("```sql\nDELETE FROM customers;\n```", e)
    slow = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r"
    assert not SCORERS["sql"][0](f"```sql\n{slow}\n```", e)


def test_grounding_refuses_outside_facts_and_bad_citations():
    e = CASES["rag-warranty"].expected
    ok = SCORERS["grounded"][0]
    assert ok("The warranty is two years [1].", e)
    assert not ok("The warranty is two years.", e)  # no citation
    assert not ok("The warranty is two years [2].", e)  # cites the wrong passage
    assert not ok("Two years [1], or three years with the plan.", e)  # a fact from outside


@pytest.mark.parametrize(
    "scorer,expected,problem",
    [
        ("json_schema", {"schema": {"type": 3}}, "not a valid JSON Schema"),
        ("rouge_l", {"reference": "x", "min_f": 2}, "min_f"),
        ("grounded", {"must": ["x"]}, "needs must and cite"),
        ("code", {"tests": "print(1)"}, "assert"),
        ("sql", {"setup": "CREATE TABLE t(a);", "reference": "SELECT b FROM t"}, "reference query fails"),
        ("instructions", {"checks": [{"kind": "max_words"}]}, "malformed"),
        ("refusal", {"refuse": "yes"}, "refuse"),
    ],
)
def test_malformed_expected_is_refused_at_load(scorer, expected, problem):
    assert problem in SCORERS[scorer][1](expected)


def test_parse_tool_call_round_trip():
    assert parse_tool_call(gemma_call("f", {"a": "x", "n": 3, "b": False})) == ("f", {"a": "x", "n": 3, "b": False})
