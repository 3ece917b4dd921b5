"""Transitional: the names operations/jobs.py and operations/writer.py still call as `core.<name>`, kept here
while other changes to those two files are in flight. Each name lives in the module it is imported from below;
other code imports it from there, and this module goes once those two files do.
"""

from .claims import ack_and_claim, claim, claim_shared
from .enqueue import enqueue
from .operator import cancel, replay
from .recovery import maintain
from .render import render, show
from .reports import ack, fail, heartbeat, release

__all__ = ["ack", "ack_and_claim", "cancel", "claim", "claim_shared", "enqueue", "fail", "heartbeat", "maintain",
           "release", "render", "replay", "show"]
