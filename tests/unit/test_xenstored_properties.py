"""xenstored: model-based and fuzz properties (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dom0.xenstored import Connection, Delivery, Xenstored
from dom0.xenstored.node import child_path, parent_path
from xenlike.public.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XSD_ERRORS,
    XsdSockmsgType,
    join_strings,
    split_strings,
)

T = XsdSockmsgType

DOM0_ROOT = "/t"
DOM1_ROOT = "/local/domain/1/data"
ROOTS = (DOM0_ROOT, DOM1_ROOT)


def fields(*items: bytes | str) -> bytes:
    return join_strings(items)


def check_store_consistent(d: Xenstored) -> None:
    """Every child listed exists, every node is listed by its parent, counts add up."""
    nodes = d.store.nodes
    listed = set()
    for path, node in nodes.items():
        assert len(set(node.children)) == len(node.children), path
        for name in node.children:
            child = child_path(path, name)
            assert child in nodes, child
            listed.add(child)
    for path in nodes:
        if path != "/" and not path.startswith("@"):
            assert path in listed, path
    counts: dict[int, int] = {}
    for node in nodes.values():
        counts[node.owner] = counts.get(node.owner, 0) + 1
    assert {k: v for k, v in d.store.owner_counts.items() if v} == counts


# --- the dict model -----------------------------------------------------------


def model_ancestors(path: str) -> list[str]:
    """Ancestors of ``path`` strictly below its tracked root, outermost first."""
    root = next(r for r in ROOTS if path.startswith(r + "/"))
    out = []
    current = parent_path(path)
    while current != root:
        out.append(current)
        current = parent_path(current)
    return list(reversed(out))


def model_create(model: dict[str, bytes], path: str, value: bytes | None) -> None:
    for ancestor in model_ancestors(path):
        model.setdefault(ancestor, b"")
    if value is None:
        model.setdefault(path, b"")
    else:
        model[path] = value


def model_rm(model: dict[str, bytes], path: str) -> str | None:
    """Apply RM to the model; the expected errno name, or None for success."""
    if path in model:
        for key in [k for k in model if k == path or k.startswith(path + "/")]:
            del model[key]
        return None
    return None if parent_path(path) in model else "ENOENT"


def model_children(model: dict[str, bytes], path: str) -> list[str]:
    return [k.rsplit("/", 1)[1] for k in model if parent_path(k) == path]


names = st.sampled_from(["a", "b", "c"])
sub_paths = st.tuples(st.sampled_from(ROOTS), st.lists(names, min_size=1, max_size=3)).map(
    lambda t: t[0] + "/" + "/".join(t[1])
)
any_paths = st.one_of(st.sampled_from(ROOTS), sub_paths)
values = st.binary(max_size=8)
actors = st.sampled_from(["dom0", "dom1"])


class StoreMachine(RuleBasedStateMachine):
    """The store against a dict of path -> value, from dom0 and from domain 1."""

    @initialize()
    def setup(self) -> None:
        self.d = Xenstored()
        dom0 = self.d.connect(0)
        self.watcher = self.d.connect(0)
        for msg_type, payload in (
            (T.MKDIR, fields(DOM0_ROOT)),
            (T.MKDIR, fields(DOM1_ROOT)),
            (T.SET_PERMS, fields("/local/domain/1", "n0", "r1")),
            (T.SET_PERMS, fields(DOM1_ROOT, "n1")),
            (T.WATCH, fields("/", "w")),
        ):
            assert (
                self.d.handle(dom0 if msg_type != T.WATCH else self.watcher, msg_type, 1, 0, payload)[0].msg_type
                == msg_type
            )
        self.conns = {"dom0": dom0, "dom1": self.d.introduce_domain(1)}
        self.d.drain()
        self.model: dict[str, bytes] = {DOM0_ROOT: b"", DOM1_ROOT: b""}
        self.tx: tuple[str, int] | None = None
        self.tx_model: dict[str, bytes] = {}
        self.tx_log: list[tuple[str, str, bytes]] = []
        self.tx_dirty = False

    # --- helpers --------------------------------------------------------------

    def call(self, actor: str, msg_type: int, payload: bytes, tx: int = 0) -> tuple[str | None, bytes, list[Delivery]]:
        out = self.d.handle(self.conns[actor], msg_type, 7, tx, payload)
        reply = out[0]
        assert reply.conn is self.conns[actor] and reply.req_id == 7 and reply.tx_id == tx
        events = [e for e in out[1:] if e.conn is self.watcher]
        if reply.msg_type == T.ERROR:
            return reply.payload[:-1].decode(), b"", events
        assert reply.msg_type == msg_type
        return None, reply.payload, events

    @staticmethod
    def denied(actor: str, path: str) -> bool:
        return actor == "dom1" and not (path == DOM1_ROOT or path.startswith(DOM1_ROOT + "/"))

    def expect_mutation(self, actor: str, op: str, path: str, value: bytes) -> None:
        before = dict(self.model)
        msg_type = {"write": T.WRITE, "mkdir": T.MKDIR, "rm": T.RM}[op]
        payload = fields(path) + value if op == "write" else fields(path)
        error, _, events = self.call(actor, msg_type, payload)
        if self.denied(actor, path):
            assert error == "EACCES"
        else:
            expected = self.apply(self.model, op, path, value)
            assert error == expected
        if self.model != before:
            assert events, "a change fired no watch"
        if events:
            # A write of the value a node already holds is still a write (C xenstored's do_write: a new
            # generation, watches fired), so a transaction that read the node conflicts with it.
            self.tx_dirty = True
        if error is not None:
            assert self.model == before and not events

    @staticmethod
    def apply(model: dict[str, bytes], op: str, path: str, value: bytes) -> str | None:
        if op == "write":
            model_create(model, path, value)
            return None
        if op == "mkdir":
            model_create(model, path, None)
            return None
        return model_rm(model, path)

    # --- rules outside transactions -------------------------------------------

    @rule(actor=actors, path=sub_paths, value=values)
    def write(self, actor: str, path: str, value: bytes) -> None:
        self.expect_mutation(actor, "write", path, value)

    @rule(actor=actors, path=sub_paths)
    def mkdir(self, actor: str, path: str) -> None:
        self.expect_mutation(actor, "mkdir", path, b"")

    @rule(actor=actors, path=sub_paths)
    def rm(self, actor: str, path: str) -> None:
        self.expect_mutation(actor, "rm", path, b"")

    @rule(actor=actors, path=any_paths)
    def read(self, actor: str, path: str) -> None:
        error, payload, _ = self.call(actor, T.READ, fields(path))
        if self.denied(actor, path):
            assert error == "EACCES"
        elif path in self.model:
            assert error is None and payload == self.model[path]
        else:
            assert error == "ENOENT"

    @rule(actor=actors, path=any_paths)
    def directory(self, actor: str, path: str) -> None:
        error, payload, _ = self.call(actor, T.DIRECTORY, fields(path))
        if self.denied(actor, path):
            assert error == "EACCES"
        elif path in self.model:
            assert error is None
            assert [n.decode() for n in split_strings(payload)] == model_children(self.model, path)
        else:
            assert error == "ENOENT"

    # --- transactions ---------------------------------------------------------

    @precondition(lambda self: self.tx is None)
    @rule(actor=actors)
    def tx_start(self, actor: str) -> None:
        error, payload, _ = self.call(actor, T.TRANSACTION_START, b"\0")
        assert error is None
        self.tx = (actor, int(payload[:-1]))
        self.tx_model = dict(self.model)
        self.tx_log = []
        self.tx_dirty = False

    @precondition(lambda self: self.tx is not None)
    @rule(op=st.sampled_from(["write", "mkdir", "rm"]), path=sub_paths, value=values)
    def tx_mutate(self, op: str, path: str, value: bytes) -> None:
        assert self.tx is not None
        actor, tx = self.tx
        msg_type = {"write": T.WRITE, "mkdir": T.MKDIR, "rm": T.RM}[op]
        payload = fields(path) + value if op == "write" else fields(path)
        error, _, events = self.call(actor, msg_type, payload, tx)
        assert events == []
        if self.denied(actor, path):
            assert error == "EACCES"
            return
        expected = self.apply(self.tx_model, op, path, value)
        if not self.tx_dirty:
            assert error == expected
        if error is None:
            self.tx_log.append((op, path, value))

    @precondition(lambda self: self.tx is not None)
    @rule(path=any_paths)
    def tx_read(self, path: str) -> None:
        assert self.tx is not None
        actor, tx = self.tx
        error, payload, _ = self.call(actor, T.READ, fields(path), tx)
        if self.denied(actor, path):
            assert error == "EACCES"
        elif not self.tx_dirty:
            if path in self.tx_model:
                assert error is None and payload == self.tx_model[path]
            else:
                assert error == "ENOENT"

    @precondition(lambda self: self.tx is not None)
    @rule(commit=st.booleans())
    def tx_end(self, commit: bool) -> None:
        assert self.tx is not None
        actor, tx = self.tx
        self.tx = None
        before = dict(self.model)
        error, _, events = self.call(actor, T.TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
        if not commit:
            assert error is None and not events
            return
        if error == "EAGAIN":
            assert self.tx_dirty, "conflict without any concurrent change"
            assert not events
            return
        assert error is None
        for op, path, value in self.tx_log:
            self.apply(self.model, op, path, value)
        if self.model != before:
            assert events

    # --- invariants -----------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        tracked = {
            p: n.value for p, n in self.d.store.nodes.items() if any(p == r or p.startswith(r + "/") for r in ROOTS)
        }
        assert tracked == self.model
        check_store_consistent(self.d)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- fuzzing the dispatcher ---------------------------------------------------

_tokens = st.sampled_from(
    [
        b"/", b"/a", b"/a/b", b"a", b"a/b", b"", b"//", b"/a/", b"@introduceDomain", b"@releaseDomain",
        b"@releaseDomain/1", b"/local/domain/1", b"/local/domain/1/data/x", b"data", b"0", b"1", b"2",
        b"-1", b"99999999999", b"T", b"F", b"r1", b"n0", b"b65535", b"w2", b"x9", b"nodes", b"watches",
        b"check", b"help", b"\xff\xfe",
    ]
)  # fmt: skip
_structured = st.lists(_tokens, max_size=4).map(lambda parts: b"".join(p + b"\0" for p in parts))
_payloads = st.one_of(_structured, _structured.map(lambda p: p + b"tail"), st.binary(max_size=64))
_types = st.one_of(st.integers(0, 27), st.just(0xFFFF), st.integers(0, 0xFFFFFFFF))
_requests = st.lists(
    st.tuples(st.integers(0, 2), _types, st.sampled_from([0, 0, 1, 2, 0xFFFFFFFF]), _payloads),
    max_size=25,
)


@settings(max_examples=250, deadline=None)
@given(requests=_requests)
def test_handle_never_raises_and_always_answers(requests: list[tuple[int, int, int, bytes]]) -> None:
    d = Xenstored()
    conns: list[Connection] = [d.connect(0), d.introduce_domain(1), d.connect(2, privileged=False)]
    for index, msg_type, tx_id, payload in requests:
        conn = conns[index]
        out = d.handle(conn, msg_type, 77, tx_id, payload)
        if conn.closed:
            assert out == []
            continue
        reply = out[0]
        assert (reply.conn, reply.req_id, reply.tx_id) == (conn, 77, tx_id)
        if reply.msg_type == T.ERROR:
            assert reply.payload[:-1].decode() in XSD_ERRORS
        else:
            assert reply.msg_type == msg_type
        for delivery in out:
            assert len(delivery.payload) <= XENSTORE_PAYLOAD_MAX
        for event in out[1:]:
            assert event.msg_type == T.WATCH_EVENT and event.req_id == 0
    check_store_consistent(d)
