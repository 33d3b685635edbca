"""`ReadBuffer`: one reusable receive buffer per connection, sized to its traffic.

Reading into a buffer that is kept (`recv_into`, `SSLObject.read(n, buffer)`) saves an
allocation and often a copy per read, but a 256 KiB buffer kept by every idle connection of a
node with thousands of agents would cost hundreds of MB. As Netty's adaptive allocator does,
the buffer grows fast while reads fill it and shrinks slowly while they use little of it:
an idle or chatty connection holds `MIN_SIZE`, a bulk one `MAX_SIZE`.
"""

from __future__ import annotations

MIN_SIZE = 16 * 1024
MAX_SIZE = 256 * 1024
GROW = 4  # factor when a read filled the buffer
SHRINK_AFTER = 8  # reads in a row that used less than an eighth of it


class ReadBuffer:
    __slots__ = ("_small", "view")

    def __init__(self, size: int = MIN_SIZE) -> None:
        self.view = memoryview(bytearray(max(MIN_SIZE, min(MAX_SIZE, size))))
        self._small = 0

    def __len__(self) -> int:
        return len(self.view)

    def record(self, n: int) -> None:
        """A read put `n` bytes into `view`: adapt the size for the next read.

        Call it only once `view[:n]` has been used: a resize replaces `view`.
        """
        size = len(self.view)
        if n >= size:
            self._small = 0
            if size < MAX_SIZE:
                self.view = memoryview(bytearray(min(MAX_SIZE, size * GROW)))
        elif n < size // 8 and size > MIN_SIZE:
            self._small += 1
            if self._small >= SHRINK_AFTER:
                self._small = 0
                self.view = memoryview(bytearray(max(MIN_SIZE, size // 2)))
        else:
            self._small = 0
