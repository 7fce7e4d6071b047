"""The candidate's side of a code check: runs inside the candidate's own sandboxed process as main.py.

Nothing here is trusted: the candidate's code runs in this interpreter and may replace any of it.
It defines the candidate, then answers the checker's calls on fd 3 (requests) / fd 4 (replies),
one JSON line each (see wire.py). Its fd 1 is a copy of stderr, so prints cannot garble the replies.
"""

import json
import os
import sys

import wire

REQUESTS, REPLIES = 3, 4


def send(message: dict) -> None:
    data = wire.dumps(message)
    while data:
        data = data[os.write(REPLIES, data) :]


def message_of(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except Exception:  # noqa: BLE001 - a candidate's exception may fail to print
        return ""


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {message_of(exc)}"


def define(entry_point: str):
    with open("candidate.py", encoding="utf-8", errors="replace") as f:
        source = f.read()
    try:
        code = compile(source, "candidate.py", "exec")
    except (SyntaxError, ValueError) as e:
        send({"kind": "error", "message": "the candidate does not compile: " + describe(e)})
        return None
    namespace = {"__name__": "__candidate__"}
    try:
        exec(code, namespace)  # noqa: S102 - running the candidate is the point
    except MemoryError:
        send({"kind": "error", "message": "MemoryError while defining the candidate"})
        return None
    except BaseException as e:  # noqa: BLE001 - anything the definition raises is the candidate's error
        send({"kind": "error", "message": "while defining the candidate: " + describe(e)})
        return None
    function = namespace.get(entry_point)
    if not callable(function):
        send({"kind": "error", "message": f"the candidate defines no {entry_point!r}"})
        return None
    return function


def answer(function, request: dict) -> dict:
    args = wire.decode(request["args"])
    kwargs = {k: wire.decode(v) for k, v in request["kwargs"]}
    try:
        value = function(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - reported to the checker, which raises it in the test
        return {"kind": "raise", "type": type(e).__name__[:200], "message": message_of(e)}
    try:
        return {"kind": "return", "value": wire.encode(value)}
    except wire.Unserialisable as e:
        return {"kind": "unserialisable", "type": str(e)[:500]}
    except RecursionError:
        return {"kind": "unserialisable", "type": "a value nested too deeply"}


def main() -> None:
    with open("run.json") as f:
        entry_point = json.load(f)["entry_point"]
    function = define(entry_point)
    if function is None:
        return
    send({"kind": "ready"})
    requests = os.fdopen(REQUESTS, "rb")
    for line in requests:
        send(answer(function, json.loads(line)))
    sys.stdout.flush()


main()
