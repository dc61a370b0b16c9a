"""The stream: what training and evaluation share about the events they replay.

``event_ids`` / ``batch_ids``: the one id of an event, computed from its ``__key__`` by the replay
(``batch["id"]``) and read by everything that inserts into or asks the memory.
"""

from luma_pl.stream.ids import ID_BITS, batch_ids, event_ids

__all__ = ["ID_BITS", "batch_ids", "event_ids"]
