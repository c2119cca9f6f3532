"""A link that corrupts files in transit, for a test sshd: runs as its sftp subsystem, sits between the
client and the real sftp-server, and flips one byte in every WRITE to a file named ``.source.EXT`` or ``source``
(the names Ansible's copy gives a file on its way to the device). Everything else passes untouched, so ssh,
Ansible's own module uploads and reads still work.

Usage (sshd_config): Subsystem sftp PYTHON corrupt_sftp.py /usr/lib/openssh/sftp-server
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import threading

OPEN, WRITE, HANDLE = 3, 6, 102
SOURCE = re.compile(rb"^\.?source(\.|$)")


def _string(buf: bytes, at: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", buf, at)
    return buf[at + 4 : at + 4 + n], at + 4 + n


def _packets(stream):
    while True:
        head = stream.read(4)
        if len(head) < 4:
            return
        (n,) = struct.unpack(">I", head)
        body = b""
        while len(body) < n:
            chunk = stream.read(n - len(body))
            if not chunk:
                return
            body += chunk
        yield body


def main() -> None:
    server = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    opened: dict[int, bytes] = {}  # request id -> file name
    targets: set[bytes] = set()  # handles of the files in transit
    lock = threading.Lock()

    def replies() -> None:
        out = sys.stdout.buffer
        for body in _packets(server.stdout):
            if body[0] == HANDLE:
                (rid,) = struct.unpack_from(">I", body, 1)
                handle, _ = _string(body, 5)
                with lock:
                    if SOURCE.match(os.path.basename(opened.pop(rid, b""))):
                        targets.add(handle)
            out.write(struct.pack(">I", len(body)) + body)
            out.flush()

    t = threading.Thread(target=replies, daemon=True)
    t.start()
    for body in _packets(sys.stdin.buffer):
        if body[0] == OPEN:
            (rid,) = struct.unpack_from(">I", body, 1)
            name, _ = _string(body, 5)
            with lock:
                opened[rid] = name
        elif body[0] == WRITE:
            handle, at = _string(body, 5)
            data_at = at + 8 + 4
            with lock:
                hit = handle in targets
            if hit and len(body) > data_at:
                body = body[:data_at] + bytes([body[data_at] ^ 0xFF]) + body[data_at + 1 :]
        server.stdin.write(struct.pack(">I", len(body)) + body)
        server.stdin.flush()
    server.stdin.close()
    t.join()
    sys.exit(server.wait())


if __name__ == "__main__":
    main()
