"""The checker's side of a code check: trusted, runs as main.py in its own sandboxed process, apart
from the candidate's (its own directory, Landlock domain and, where possible, uid; not dumpable).

It runs the problem's prompt (for helpers the tests use, such as HumanEval's `poly`) and its tests
in this interpreter, with the entry point bound to a proxy: each call crosses to the candidate's
process as plain data (wire.py) and the reply comes back as fresh builtin values, so nothing the
candidate defines ever runs here. The verdict is written once, as one JSON line, on a copy of fd 1
that only this process holds; the tests' own prints go to stderr.

Report verdicts: pass | fail | error | candidate_gone (the candidate stopped answering: the parent
decides timeout or error from how its process ended).
"""

import builtins
import json
import os
import traceback

import wire

REQUESTS, REPLIES = 3, 4
REPORT = os.dup(1)
os.dup2(2, 1)
KINDS = {
    "ready": {"kind"},
    "error": {"kind", "message"},
    "return": {"kind", "value"},
    "raise": {"kind", "type", "message"},
    "unserialisable": {"kind", "type"},
}


def report(verdict: str, message: str = "") -> None:
    data = json.dumps({"verdict": verdict, "message": message[:2000]}).encode() + b"\n"
    while data:
        data = data[os.write(REPORT, data) :]
    os._exit(0)


class CandidateGone(BaseException):
    """The candidate's process closed its end: it ended, or gave up answering."""


class Decided(BaseException):
    """The check cannot pass any more (a BaseException, so `except Exception` in a test cannot hide it)."""

    def __init__(self, verdict: str, message: str) -> None:
        super().__init__(message)
        self.verdict, self.message = verdict, message


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one."""


class Channel:
    def __init__(self, max_message: int) -> None:
        self.replies = os.fdopen(REPLIES, "rb")
        self.max_message = max_message
        self.decided: Decided | None = None
        self.gone = False
        self.calls = 0

    def ended(self) -> CandidateGone:
        self.gone = True
        return CandidateGone()

    def decide(self, verdict: str, message: str) -> Decided:
        if self.decided is None:
            self.decided = Decided(verdict, message)
        return self.decided

    def send(self, message: dict) -> None:
        data = wire.dumps(message)
        try:
            while data:
                data = data[os.write(REQUESTS, data) :]
        except BrokenPipeError:
            raise self.ended() from None

    def receive(self) -> dict:
        line = self.replies.readline(self.max_message + 1)
        if len(line) > self.max_message:
            raise self.decide("error", f"the candidate sent a reply over {self.max_message} bytes")
        if not line.endswith(b"\n"):
            raise self.ended()
        try:
            message = wire.loads(line)
        except wire.Malformed as e:
            raise self.decide("error", f"the candidate broke the protocol: {e}") from None
        kind = message.get("kind") if type(message) is dict else None
        expected = KINDS.get(kind) if type(kind) is str else None
        if expected is None or set(message) != expected:
            raise self.decide("error", "the candidate broke the protocol: an unknown reply")
        if any(type(message[k]) is not str for k in expected - {"value"}):
            raise self.decide("error", "the candidate broke the protocol: a reply field is not text")
        return message


# Exceptions that steer the tests' own control flow: a StopIteration raised inside map() or a generator
# ends the iteration, so `all(map(candidate, cases))` would come out True. They come back as CandidateError.
CONTROL_FLOW = (StopIteration, StopAsyncIteration)


def raised(kind: str, message: str) -> Exception:
    """The candidate's exception, rebuilt here: the builtin class of that name, else CandidateError
    (always for CONTROL_FLOW exceptions)."""
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, CONTROL_FLOW):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001, S110 - classes whose constructor wants other arguments
            pass
    return CandidateError(f"{kind}: {message}")


class Candidate:
    """Stands for the candidate's entry point in the tests."""

    def __init__(self, channel: Channel, name: str) -> None:
        self._channel = channel
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        channel = self._channel
        if channel.decided is not None:
            raise channel.decided
        if channel.gone:
            raise CandidateGone
        try:
            request = {
                "kind": "call",
                "args": wire.encode(list(args)),
                "kwargs": [[str(k), wire.encode(v)] for k, v in kwargs.items()],
            }
        except wire.Unserialisable as e:
            raise channel.decide("error", f"the tests pass {e} to the candidate: only builtin values cross")
        channel.calls += 1
        channel.send(request)
        reply = channel.receive()
        if reply["kind"] == "return":
            try:
                return wire.decode(reply["value"])
            except wire.Malformed as e:
                raise channel.decide("error", f"the candidate broke the protocol: {e}") from None
        if reply["kind"] == "raise":
            if reply["type"] == "MemoryError":
                raise channel.decide("error", "the candidate ran out of memory (MemoryError)")
            raise raised(reply["type"], reply["message"])
        if reply["kind"] == "unserialisable":
            raise channel.decide("fail", f"the candidate returned {reply['type']}: only builtin values cross")
        raise channel.decide(
            "error", f"the candidate broke the protocol: a {reply['kind']!r} reply to a call"
        )


def describe(exc: BaseException, source_name: str, source: str) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    lines = source.splitlines()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == source_name]
    if frames and 0 < (frames[-1].lineno or 0) <= len(lines):
        text += f" at {source_name}:{frames[-1].lineno}: {lines[frames[-1].lineno - 1].strip()}"
    return text


def wait_until_ready(channel: Channel) -> None:
    try:
        first = channel.receive()
    except CandidateGone:
        report("candidate_gone", "the candidate ended before it was defined")
    except Decided as d:
        report(d.verdict, d.message)
    if first["kind"] == "error":
        report("error", first["message"])
    if first["kind"] != "ready":
        report("error", "the candidate broke the protocol: it answered before it was called")


def run_tests(channel: Channel, entry_point: str, prompt: str, tests: str) -> None:
    namespace = {"__name__": "__checker__"}
    if prompt:
        try:  # the problem's own helpers; a prompt that does not run here leaves them undefined
            exec(compile(prompt, "prompt.py", "exec"), namespace)  # noqa: S102
        except BaseException:  # noqa: BLE001, S110
            pass
    proxy = Candidate(channel, entry_point)
    namespace[entry_point] = proxy
    try:
        code = compile(tests, "tests.py", "exec")
    except (SyntaxError, ValueError) as e:
        report("error", "the tests do not compile: " + describe(e, "tests.py", tests))
    try:
        exec(code, namespace)  # noqa: S102
        check = namespace.get("check")
        if callable(check):
            check(proxy)
    except CandidateGone:
        report("candidate_gone", f"the candidate stopped answering (call {channel.calls})")
    except Decided as d:
        report(d.verdict, d.message)
    except MemoryError:
        report("error", "MemoryError while testing")
    except BaseException as e:  # noqa: BLE001 - a failed assertion, or the candidate's exception
        if channel.decided is not None:
            report(channel.decided.verdict, channel.decided.message)
        report("fail", describe(e, "tests.py", tests))
    if channel.decided is not None:  # the tests swallowed it
        report(channel.decided.verdict, channel.decided.message)
    if channel.gone:
        report("candidate_gone", f"the candidate stopped answering (call {channel.calls})")
    if channel.calls == 0:
        report("error", "the tests never called the candidate")
    report("pass", f"{channel.calls} calls")


def main() -> None:
    with open("check.json") as f:
        config = json.load(f)
    with open("tests.py", encoding="utf-8") as f:
        tests = f.read()
    with open("prompt.py", encoding="utf-8") as f:
        prompt = f.read()
    channel = Channel(int(config["max_message"]))
    wait_until_ready(channel)
    run_tests(channel, config["entry_point"], prompt, tests)


try:
    main()
except BaseException as e:  # noqa: BLE001 - the checker itself failed: say so rather than die silently
    report("error", f"the checker failed: {type(e).__name__}: {e}")
