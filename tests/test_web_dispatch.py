"""The dispatcher of `manage.py serve --web-processes N` (feedback_app/web.py): each accepted connection
goes to the web process with the fewest open, as the web processes report them; a web process whose
channel closed gets no more. Real sockets, no server: the web processes' ends are read here."""

import socket

import pytest

from feedback_app.web import Dispatcher


@pytest.fixture
def dispatcher():
    listener = socket.create_server(("127.0.0.1", 0))
    d = Dispatcher(listener)
    clients = []

    def connect(n=1):
        for _ in range(n):
            clients.append(socket.create_connection(listener.getsockname(), timeout=5))
        for _ in range(3):  # the queued connections, and any report or close that came with them
            d.run_once(timeout=0.02)
        return clients[-n:]

    d.connect = connect
    yield d
    for c in clients:
        c.close()
    listener.close()


def received(channel: socket.socket) -> list[socket.socket]:
    """The connections handed over `channel` so far, as the web process gets them."""
    channel.setblocking(False)
    out = []
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(channel, 16, 16)
        except BlockingIOError:
            return out
        out += [socket.socket(fileno=fd) for fd in fds]


def test_connections_are_spread_evenly_and_reach_the_web_process(dispatcher):
    a, b = dispatcher.channel_for(0), dispatcher.channel_for(1)
    clients = dispatcher.connect(6)
    got_a, got_b = received(a), received(b)
    assert (len(got_a), len(got_b)) == (3, 3)
    # The handed socket is the client's connection itself.
    conn = got_a[0]
    conn.setblocking(True)
    conn.sendall(b"hello")
    (client,) = [c for c in clients if c.getsockname() == conn.getpeername()]
    assert client.recv(16) == b"hello"
    assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_the_least_loaded_by_its_own_report_gets_the_next_ones(dispatcher):
    a, b = dispatcher.channel_for(0), dispatcher.channel_for(1)
    dispatcher.connect(4)
    assert (len(received(a)), len(received(b))) == (2, 2)
    a.send(b"2 0")  # web process 0: received both, both closed since
    dispatcher.connect(2)
    assert (len(received(a)), len(received(b))) == (2, 0)
    # A report that lags behind what was handed counts the connections still in flight.
    b.send(b"1 1")  # received 1 of its 2, holds 1 open: its load is 2; process 0's is 2
    dispatcher.connect(1)
    assert len(received(a)) + len(received(b)) == 1


def test_a_web_process_that_is_gone_gets_nothing_more(dispatcher):
    a, b = dispatcher.channel_for(0), dispatcher.channel_for(1)
    b.close()  # its process died
    dispatcher.connect(3)
    assert len(received(a)) == 3
    assert set(dispatcher.load) == {0}


def test_a_connection_and_a_death_in_the_same_round(dispatcher):
    """One select round can bring a new connection and the EOF of a web process that just died. Handing
    the connection over first finds the channel broken and drops it; the EOF that follows in the same
    round is of a channel no longer there, and must not stop the dispatcher (it once raised KeyError,
    and the whole server shut down)."""
    a, b = dispatcher.channel_for(0), dispatcher.channel_for(1)
    dispatcher.load[1] = -1  # process 1 looks least loaded: it is picked first
    b.close()
    client = socket.create_connection(dispatcher.listener.getsockname(), timeout=5)
    try:
        for _ in range(50):  # until the connection is in the accept queue
            dispatcher._accept()
            if dispatcher.handed.get(0):
                break
        assert set(dispatcher.load) == {0} and len(received(a)) == 1
        dispatcher._report(1)  # the EOF event of the same round
        dispatcher.run_once(timeout=0.02)
        assert set(dispatcher.load) == {0}
    finally:
        client.close()


def test_a_restarted_web_process_starts_from_nothing(dispatcher):
    a, b = dispatcher.channel_for(0), dispatcher.channel_for(1)
    dispatcher.connect(2)
    received(a), received(b)
    b.close()
    b2 = dispatcher.channel_for(1)  # the supervisor restarted it on a fresh channel
    dispatcher.connect(1)
    assert (len(received(a)), len(received(b2))) == (0, 1)  # process 0 still holds its one


def test_with_no_web_process_a_connection_is_closed_not_left_hanging(dispatcher):
    (client,) = dispatcher.connect(1)
    assert client.recv(16) == b""  # closed: the client can retry rather than wait
