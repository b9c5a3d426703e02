"""The durable backend: one SQLite database in WAL mode, written by one thread.

How an append reaches the disk (docs/storage.md has the long version):

1. ``append()`` runs on the event loop (store.py). It checks that the stream
   exists, puts an operation on the writer's queue and awaits a future.
2. The writer thread (writer.py) takes every operation waiting in the queue (a
   batch) and evaluates each against *shadow copies* of the committed states
   (batch.py), with the same functions the memory store uses
   (protocol.state.decide_append and apply_append, store.plans.plan_create and
   plan_delete), so both backends give the same answers. Operations run in
   queue order, which serializes each (stream, producer) pair as PROTOCOL.md
   5.2.1 asks.
3. The whole batch is written in ONE transaction: records (each with its
   checksum), stream rows, producer rows, registry events and the id counter.
   With ``synchronous=FULL`` the commit fsyncs the WAL once for the batch
   (group commit). Data, producer state and the registry therefore move
   together (PROTOCOL.md 5.2.1, atomicity). A batch of nothing but unsynced
   appends (``AppendRequest.sync`` False: the proxy's body batches) commits
   with ``synchronous=NORMAL``, without the fsync.
4. After the commit the writer hands the new states to the event loop
   (``call_soon_threadsafe``), which swaps them in, appends the new records to
   the tail cache, resolves the futures and wakes live readers. Readers only
   ever see committed data, and an acknowledgement of a (synced) append means
   the bytes are on disk.

If the transaction fails (disk full, I/O error) it is rolled back, the shadows
are dropped, and the batch's operations are retried one per transaction so
that only those that cannot be written fail (507 or 503). Reads keep working.

Modules: schema.py (file format, migrations, checksums, opening), batch.py (a
transaction's view), writer.py (the writer thread, reclaiming), store.py (the
event-loop side and disk reads), check.py (``duralog check``).
"""

from .schema import DB_NAME, StoreFileError
from .store import SQLiteStore

__all__ = ["DB_NAME", "SQLiteStore", "StoreFileError"]
