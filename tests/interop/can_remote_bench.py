"""Throughput of python-can-remote (a websocket CAN bridge) on loopback, for the comparison
in `obdgw bench tunnel`.

A can_remote server bridges a python-can virtual bus to a websocket on 127.0.0.1 (ephemeral
port); a client in a second process connects with python-can's `remote` interface; a sender
in the server's process puts N frames on the virtual bus as fast as it can. Prints one JSON
line: frames sent and received by the client, and the client's receive rate.

usage: can_remote_bench.py FRAMES
"""
import json
import multiprocessing as mp
import sys
import threading
import time

import can
from can_remote.server import RemoteServer


def client(port, n, ready, result):
    bus = can.Bus(channel="ws://127.0.0.1:%d/" % port, interface="remote")
    ready.set()
    got = 0
    first = last = None
    while got < n:
        m = bus.recv(timeout=2.0)
        if m is None:
            break
        now = time.perf_counter()
        if first is None:
            first = now
        last = now
        got += 1
    secs = (last - first) if (first is not None and last is not None and last > first) else 0.0
    result.put({"received": got, "seconds": secs})
    bus.shutdown()


def main():
    n = int(sys.argv[1])
    server = RemoteServer(host="127.0.0.1", port=0, channel="obdgw-bench", interface="virtual")
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx = mp.get_context("fork")
    ready, result = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=client, args=(port, n, ready, result))
    proc.start()
    if not ready.wait(20):
        print(json.dumps({"error": "the can_remote client did not connect within 20 s"}))
        sys.exit(1)
    # The server opens its bus when the client's bus request arrives; give the request a
    # moment to be processed by polling for the server's client list.
    deadline = time.time() + 10
    while not server.clients and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    sender = can.Bus(channel="obdgw-bench", interface="virtual")
    t0 = time.perf_counter()
    for i in range(n):
        sender.send(can.Message(arbitration_id=0x123, data=i.to_bytes(8, "big"), is_extended_id=False))
    send_secs = time.perf_counter() - t0
    r = result.get(timeout=600)
    proc.join(10)
    fps = r["received"] / r["seconds"] if r["seconds"] > 0 else 0.0
    print(json.dumps({"sent": n, "received": r["received"], "seconds": r["seconds"],
                      "send_seconds": send_secs, "fps": fps}))


if __name__ == "__main__":
    main()
