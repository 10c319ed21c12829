"""Fair scheduling: which queued job runs next. Pure: no I/O, no clock.

- Live jobs first (oldest first): a painter in live mode waits for at most
  the job that is running. A client has at most one queued live job: a newer
  one supersedes it.
- Then round-robin across clients: the client whose last job started longest
  ago goes first (one that has never started a job before all others), and a
  client's own jobs run in the order it sent them. A painter with 30 queued
  jobs therefore delays another painter's single job by at most the job that
  is running.
- A per-client limit on queued jobs, so one client cannot fill the queue.

Among the clients equally entitled to run next, a worker that already has
a model loaded may prefer the one whose job uses it (`prefer`): that never
lets anyone overtake a client with a better claim.

The Redis queue implements the same rules in a Lua script (redis_queue.py);
both are tested against the same fairness scenario.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field


class ClientQueueFull(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"you have {limit} jobs queued, the most one client may have; wait for some to finish")
        self.limit = limit


@dataclass
class _Client:
    jobs: deque[str] = field(default_factory=deque)  # ordinary jobs, submit order
    live: str = ""  # the one queued live job, if any
    turn: int = 0  # when a job of this client last started (0 = never)


@dataclass
class Entry:
    id: str
    owner: str
    live: bool = False
    model: str = ""


REMEMBERED_TURNS = 4096  # clients whose last turn is kept after their queue emptied


class FairScheduler:
    def __init__(self, per_client: int = 32) -> None:
        self.per_client = per_client
        self._clients: dict[str, _Client] = {}
        self._entries: dict[str, Entry] = {}
        self._live: dict[str, None] = {}  # queued live job ids, oldest first
        self._arrival = itertools.count(1)
        self._order: dict[str, int] = {}  # client -> arrival, tie-breaker among equals
        self._turns = itertools.count(1)
        # A client that just ran and sends its next job keeps its place behind the
        # others (bounded: the oldest entries are forgotten first).
        self._past: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._entries

    def queued(self, owner: str) -> int:
        client = self._clients.get(owner)
        return len(client.jobs) if client else 0

    def add(self, entry: Entry, *, restored: bool = False) -> str:
        """Queue a job. Returns the id of a live job it supersedes ("" if none).
        Raises ClientQueueFull beyond the per-client limit (not for jobs restored
        after a restart: those were accepted already)."""
        client = self._clients.get(entry.owner)
        if client is None:
            client = self._clients[entry.owner] = _Client(turn=self._past.pop(entry.owner, 0))
            self._order[entry.owner] = next(self._arrival)
        superseded = ""
        if entry.live:
            if client.live:
                superseded = client.live
                self._live.pop(superseded, None)
                del self._entries[superseded]
            client.live = entry.id
            self._live[entry.id] = None
        else:
            if not restored and self.per_client and len(client.jobs) >= self.per_client:
                raise ClientQueueFull(self.per_client)
            client.jobs.append(entry.id)
        self._entries[entry.id] = entry
        return superseded

    def remove(self, job_id: str) -> bool:
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return False
        client = self._clients[entry.owner]
        if entry.live:
            self._live.pop(job_id, None)
            client.live = ""
        else:
            client.jobs.remove(job_id)
        self._forget_if_idle(entry.owner)
        return True

    def live_of(self, owner: str) -> str:
        client = self._clients.get(owner)
        return client.live if client else ""

    def _candidates(self) -> list[str]:
        """Owners with ordinary jobs, best claim first."""
        owners = [o for o, c in self._clients.items() if c.jobs]
        return sorted(owners, key=lambda o: (self._clients[o].turn, self._order[o]))

    def order(self) -> list[str]:
        """Every queued job id in the order they would start (no model preference)."""
        out = list(self._live)
        heads = {o: list(self._clients[o].jobs) for o in self._candidates()}
        owners = self._candidates()
        while owners:  # round-robin over the clients' own queues
            for owner in list(owners):
                out.append(heads[owner].pop(0))
                if not heads[owner]:
                    owners.remove(owner)
        return out

    def position(self, job_id: str) -> int:
        """Jobs that would start before this one (0 = next)."""
        try:
            return self.order().index(job_id)
        except ValueError:
            return 0

    def next(self, prefer: str | None = None) -> Entry | None:
        """Take the job to start now. `prefer`: a model name the caller has loaded."""
        if self._live:
            job_id = next(iter(self._live))
        else:
            owners = self._candidates()
            if not owners:
                return None
            best = self._clients[owners[0]].turn
            equals = [o for o in owners if self._clients[o].turn == best]
            chosen = equals[0]
            if prefer is not None:
                chosen = next((o for o in equals if self._entries[self._clients[o].jobs[0]].model == prefer), chosen)
            job_id = self._clients[chosen].jobs[0]
        entry = self._entries[job_id]
        turn = next(self._turns)
        self._clients[entry.owner].turn = turn
        self.remove(job_id)
        return entry

    def _forget_if_idle(self, owner: str) -> None:
        client = self._clients.get(owner)
        if client is not None and not client.jobs and not client.live:
            del self._clients[owner]
            self._order.pop(owner, None)
            if client.turn:
                self._past[owner] = client.turn
                while len(self._past) > REMEMBERED_TURNS:
                    self._past.popitem(last=False)
